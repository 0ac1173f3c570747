"""`distracer tune`: the tune section's validation, and a small real search on a local Ray."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from distracer.checkpoint import load_checkpoint
from distracer.cli import main
from distracer.errors import ConfigError
from distracer.tuning import TargetScoreStopper, build_stopper, load_search, run_search, trial_config

# As tests/test_runtime.py: 48x48 frames, tiny batches. Each run ends with one stock 1000-step evaluation
# episode (~5 s); no periodic ones. Per trial 1 + 3 x 0.25 CPUs, so both trials fit the 4-CPU test Ray.
SMALL = [
    "env.frame_size=48", "eval.every_env_steps=0", "eval.episodes=1",
    "eval.select_episodes=0", "off_policy.fragment_length=16",
    "replay.ram_budget=64MB", "off_policy.weights_interval=10", "learner.device=cpu",
    "algo=sac_drq", "sac_drq.batch_size=16", "sac_drq.learning_starts=64", "sac_drq.replay_ratio=0.5",
    "resources.learner_cpus=0.25", "resources.worker_cpus=0.25", "resources.shard_cpus=0.25",
    "total_env_steps=192", "checkpoint.every_env_steps=64",
]
SEARCH = [
    "tune.name=t", "tune.num_samples=1", "tune.seeds=[1, 2]", "tune.num_to_keep=2", "tune.max_failures=0",
    "tune.search_space.sac_drq.actor_lr={type: loguniform, lower: 1.0e-4, upper: 1.0e-3, also: [sac_drq.critic_lr]}",
    "tune.scheduler={type: asha, grace_period: 64, max_t: 192, reduction_factor: 2}",
]


REPO = Path(__file__).resolve().parents[1]
SEARCH_SAC = str(REPO / "tune_configs/search_sac_drq.yaml")


def search_for(tmp_path: Path, *extra: str):
    return load_search(None, SMALL + SEARCH + [f"run_dir={tmp_path}", *extra])


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.bogus=1", r"tune\.bogus: unknown key"),
        ("tune.num_samples=0", r"tune\.num_samples=0"),
        ("tune.num_samples=many", r"tune\.num_samples='many' must be an integer"),
        ("tune.metric=score", r"tune\.metric='score' is not reported"),
        ("tune.mode=up", r"tune\.mode='up'"),
        ("tune.scheduler=hyperband", r"tune\.scheduler\.type='hyperband' is unknown"),
        ("tune.scheduler.grace=3", r"tune\.scheduler\.grace: unknown key"),
        ("tune.stoppers.target.scope=all", r"scope='all'"),
        ("tune.stoppers.plateau.num_results=1", r"num_results >= 2"),
        ("tune.seeds=[3, 3]", r"duplicates"),
        ("tune.search_space.sac_drq.actor_lr.type=normal", r"type='normal' is unknown"),
        ("tune.search_space.sac_drq.actor_lr.lower=0", r"loguniform needs lower > 0"),
        ("tune.search_space.sac_drq.batch_size={type: choice, values: [16, 0]}", r"batch_size=0.*>= 1"),
        ("tune.search_space.sac_drq.bogus={type: randint, lower: 1, upper: 4}", r"sac_drq\.bogus: unknown key"),
        ("tune.search_space.seed={type: randint, lower: 1, upper: 4}", r"keep one"),
        ("tune.search_space.sac_drq.tau=0.1", r"give a dim like"),
    ],
)
def test_bad_tune_section_is_one_line_error(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as info:
        search_for(tmp_path, override)
    assert "\n" not in str(info.value)


def test_cli_check_and_errors(tmp_path, capsys):
    assert main(["tune", "--check", "--config", SEARCH_SAC]) == 0
    assert "12 trial(s)" in capsys.readouterr().out
    assert main(["tune", "--check", "--config", SEARCH_SAC, "--set", "tune.nope=1"]) == 2
    assert capsys.readouterr().err.strip() == "distracer: error: tune.nope: unknown key; allowed: " + ", ".join(
        ["name", "storage_path", "num_samples", "seeds", "search_space", "metric", "mode", "scheduler", "stoppers",
         "num_to_keep", "max_failures", "max_concurrent_trials", "wait_for_resources"])
    assert main(["tune", "--resume", str(tmp_path)]) == 2
    assert "not a distracer tune experiment" in capsys.readouterr().err


def test_trial_config_ties_also_keys_and_keeps_base(tmp_path):
    search = search_for(tmp_path)
    config = trial_config(search, {"sac_drq.actor_lr": 3e-4, "seed": 2}, run_dir=str(tmp_path / "trial"))
    assert config.sac_drq.actor_lr == config.sac_drq.critic_lr == 3e-4
    assert config.seed == 2 and config.env.frame_size == 48 and config.checkpoint.keep == 1
    assert search.experiment_dir == str(tmp_path / "t")


def test_stoppers_are_tunes_own():
    from ray.tune.stopper import CombinedStopper, TimeoutStopper

    search = load_search(SEARCH_SAC)
    stopper = build_stopper(search.settings)
    assert isinstance(stopper, CombinedStopper)
    assert any(isinstance(s, TimeoutStopper) for s in stopper._stoppers)
    target = TargetScoreStopper("eval_return_mean", 900, "max", "experiment")
    assert not target("a", {"eval_return_mean": float("nan")})
    assert not target("a", {"eval_return_mean": 899.0}) and not target.stop_all()
    assert target("b", {"eval_return_mean": 901.0}) and target.stop_all()


# ----------------------------------------------------------------------------------------- real searches


def _watch_placement(stop: threading.Event, seen: dict) -> None:
    """Sample Ray's resources: per placement-group bundle use, and the CPUs outside any group."""
    import ray

    while not stop.is_set():
        total, free = ray.cluster_resources(), ray.available_resources()
        seen["min_free_cpu"] = min(seen.get("min_free_cpu", 99.0), free.get("CPU", 0.0))
        for name, amount in total.items():
            match = re.fullmatch(r"CPU_group_(\d+)_([0-9a-f]+)", name)
            if match and free.get(name, 0.0) < amount - 1e-6:
                seen.setdefault(match.group(2), set()).add(int(match.group(1)))
        time.sleep(0.2)


# A whole two-trial search (about a minute); the default suite keeps Tune through the failed-trial restart
# below and the search-space/stopper unit tests.
@pytest.mark.slow
def test_search_two_trials_with_asha(ray_local, tmp_path, capsys):
    search = search_for(tmp_path)
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_placement, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        summary = run_search(search)
    finally:
        stop.set()
        watcher.join()

    assert summary["num_trials"] == 2 and summary["errors"] == []
    best = summary["best"]
    assert best is not None and best["score"] is not None and best["score"] == best["score"]
    # The best checkpoint is the final one, scored by the final evaluation of its own weights (the one before
    # it, kept too, is unscored: NaN must not win).
    assert best["checkpoint_score"] == best["score"] and best["checkpoint"].endswith("checkpoint_000003")
    ckpt = load_checkpoint(best["checkpoint"])  # Tune's checkpoint dir is a distracer checkpoint
    saved = ckpt.state["config"]
    assert saved["sac_drq"]["actor_lr"] == saved["sac_drq"]["critic_lr"] == best["config"]["sac_drq.actor_lr"]
    assert saved["seed"] == best["config"]["seed"] and ckpt.state["counters"]["env_steps"] >= 192
    # Each trial reported every checkpoint (64, 128, 192) and its final evaluation; the driver's own run dir
    # sits inside the trial dir.
    for trial in (tmp_path / "t").glob("run_trial_*"):
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["env_steps"] for r in rows][-1] >= 192 and len(rows) >= 4
        assert any(r["new_evaluation"] for r in rows)
        assert (trial / "run" / "metrics.jsonl").is_file()
    # Actors ran inside their trial's placement group: every bundle (driver, learner, worker, shard) in use,
    # and nothing took CPUs outside the two groups (4 CPUs - 2 x 1.75 reserved = 0.5 free throughout).
    groups = {k: v for k, v in seen.items() if k != "min_free_cpu"}
    assert groups and all(v == {0, 1, 2, 3} for v in groups.values()), seen
    assert seen["min_free_cpu"] >= 0.5 - 1e-6, seen
    assert (tmp_path / "t" / "distracer_search.json").is_file()


def test_search_refuses_trials_larger_than_the_cluster(ray_local, tmp_path):
    with pytest.raises(ConfigError, match="needs more than the Ray cluster has"):
        run_search(search_for(tmp_path, "resources.num_workers=2", "resources.worker_cpus=2"))
    assert not (tmp_path / "t").exists()


def _learner_pid() -> int | None:
    import ray

    for actor in ray._private.state.actors().values():
        if actor["ActorClassName"] == "LearnerActor" and actor["State"] == "ALIVE":
            return actor["Pid"]
    return None


def test_failed_trial_restarts_from_its_checkpoint_and_resume(ray_local, tmp_path):
    """A trial whose learner is SIGKILLed fails; `Tuner.restore(resume_errored=True)` (distracer tune --resume)
    restarts it from its newest Tune checkpoint, and it finishes with its counters continued. The run's own
    recovery is off here (max_recoveries=0), so the death reaches Tune; test_reliability.py tests that recovery."""
    search = search_for(tmp_path, "tune.seeds=[1]", "total_env_steps=320", "tune.scheduler=none",
                        "resources.max_recoveries=0")
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if list((tmp_path / "t").glob("run_trial_*/checkpoint_*")) and (pid := _learner_pid()):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    first = run_search(search)
    killer.join()
    assert killed and len(first["errors"]) == 1  # max_failures=0: the trial errored

    from distracer.tuning import load_saved_search

    resumed = run_search(load_saved_search(tmp_path / "t"), resume=True)
    assert resumed["errors"] == [] and resumed["num_trials"] == 1
    ckpt = load_checkpoint(resumed["best"]["checkpoint"])
    assert ckpt.state["counters"]["env_steps"] >= 320 and ckpt.state["counters"]["resumes"] == 1


@pytest.mark.slow
def test_cli_ctrl_c_then_resume(tmp_path):
    """The user's path: `distracer tune` (own embedded Ray), Ctrl-C after a checkpoint, `--resume`."""
    import subprocess
    import sys

    sets = [a for item in SMALL + SEARCH + [f"run_dir={tmp_path}", "tune.seeds=[1]", "tune.scheduler=none",
                                             "total_env_steps=640", "resources.local_num_cpus=4",
                                             "resources.object_store_memory=200MB", "resources.learner_gpus=0",
                                             "resources.num_workers=1"] for a in ("--set", item)]
    cmd = [sys.executable, "-m", "distracer", "tune", "--config", SEARCH_SAC, *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        deadline = time.time() + 180
        while (time.time() < deadline and proc.poll() is None
               and not list((tmp_path / "t").glob("run_trial_*/checkpoint_000001"))):
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert f"distracer tune --resume {tmp_path / 't'}" in out

    done = subprocess.run([sys.executable, "-m", "distracer", "tune", "--resume", str(tmp_path / "t")],
                          capture_output=True, text=True, cwd=REPO, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    best = re.search(r"best checkpoint (\S+) \(eval_return_mean (\S+)\)", done.stdout)
    assert best and best.group(2) != "nan" and best.group(2) != "None"
    ckpt = load_checkpoint(best.group(1))
    assert ckpt.state["counters"]["env_steps"] >= 640 and ckpt.state["counters"]["resumes"] == 1


ALGO_RUNS = {
    "dqn": ["algo=dqn", "env.action_space=discrete", "dqn.batch_size=16", "dqn.learning_starts=64",
            "dqn.replay_ratio=0.5", "dqn.exploration_horizon=1000",
            "tune.search_space.dqn.learning_rate={type: loguniform, lower: 1.0e-5, upper: 1.0e-3}"],
    # PPO also switches its training env halfway (env_switch: new rollout workers inside the trial's placement
    # group), as tune_configs/ppo_two_phase.yaml does.
    "ppo": ["algo=ppo", "ppo.num_steps=32", "ppo.n_epochs=2", "ppo.minibatch_size=32", "resources.num_workers=2",
            "tune.search_space.ppo.learning_rate={type: choice, values: [1.0e-4, 3.0e-4]}",
            "env_switch.at_budget=0.5", "env_switch.env.skip_penalty=-5.0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(ALGO_RUNS))
def test_search_runs_each_algorithm(ray_local, tmp_path, algo):
    """DQN (with a replay shard) and PPO (no shard: a smaller placement group) through one trial each."""
    search = load_search(None, SMALL + SEARCH + ALGO_RUNS[algo] + [
        f"run_dir={tmp_path}", "tune.seeds=[1]", "tune.search_space.sac_drq.actor_lr=null"])
    summary = run_search(search)
    assert summary["errors"] == [] and summary["num_trials"] == 1
    ckpt = load_checkpoint(summary["best"]["checkpoint"])
    assert ckpt.state["algo"] == algo and ckpt.state["counters"]["env_steps"] >= 192
    assert ckpt.state["config"]["env"]["skip_penalty"] == (-5.0 if algo == "ppo" else 0.0)  # switched (PPO)
