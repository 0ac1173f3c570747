"""End-to-end runs of the distributed runtime on a real local Ray (CPU, loopback only)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from distracer.config import load_config
from distracer.errors import ConfigError
from distracer.runtime.driver import Driver, train

# Small, fast runs: 48x48 frames keep the CPU learner quick; the env is the real (fast) CarRacing.
SMALL = [
    "env.frame_size=48", "eval.every_env_steps=0", "eval.episodes=1",
    "eval.select_episodes=0", "off_policy.fragment_length=16",
    "resources.local_num_cpus=4", "replay.ram_budget=64MB", "off_policy.weights_interval=10",
    "learner.device=cpu",
]
ALGO = {
    "sac_drq": ["algo=sac_drq", "sac_drq.batch_size=16", "sac_drq.learning_starts=64", "sac_drq.replay_ratio=0.5"],
    "dqn": ["algo=dqn", "env.action_space=discrete", "dqn.batch_size=16", "dqn.learning_starts=64",
            "dqn.replay_ratio=0.5", "dqn.exploration_horizon=1000"],
    "ppo": ["algo=ppo", "ppo.num_steps=32", "ppo.n_epochs=2", "ppo.minibatch_size=32",
            "resources.num_workers=2"],
}


def small_config(tmp_path, algo: str, *extra: str):
    return load_config(None, SMALL + ALGO[algo] + [f"run_dir={tmp_path / algo}", *extra])


# DQN goes through the same off-policy loop, replay and checkpoint as SAC+DrQ (its learner has its own unit
# tests), so its end-to-end run is in `make test-slow`, keeping the default suite under 15 minutes.
@pytest.mark.parametrize("algo", ["sac_drq", pytest.param("dqn", marks=pytest.mark.slow), "ppo"])
def test_train_evaluate_checkpoint_and_resume(ray_local, tmp_path, capsys, algo):
    config = small_config(tmp_path, algo, "total_env_steps=160", "checkpoint.every_env_steps=96")
    summary = train(config, handle_signals=False)
    assert summary["env_steps"] >= 160
    assert summary["num_updates"] > 0
    assert summary["eval_return_mean"] == summary["eval_return_mean"]  # an evaluation ran (not NaN)
    ckpt = summary["checkpoint"]
    assert os.path.isdir(ckpt)
    metrics = [json.loads(line) for line in open(tmp_path / algo / "metrics.jsonl")]
    assert metrics and metrics[-1]["env_steps"] == summary["env_steps"]

    # What the policy sees may not change; the line names just the settings that differ.
    with pytest.raises(ConfigError, match=r"trained with env.frame_size=48; the config asks for env.frame_size=52 "):
        train(small_config(tmp_path, algo, "total_env_steps=256", "env.frame_size=52"), resume=ckpt,
              handle_signals=False)
    # A training-only rule may: here the skip penalty, on the real env in the rollout workers.
    resumed_config = small_config(tmp_path, algo, "total_env_steps=256", "env.skip_penalty=-5.0")
    capsys.readouterr()
    resumed = train(resumed_config, resume=ckpt, handle_signals=False)
    out = "".join(capsys.readouterr())
    # An off-policy run resumed without its replay (save_replay off) says it refills it first.
    assert ("holds no replay: collecting 64 agent steps" in out) == (algo != "ppo")
    assert resumed["env_steps"] >= 256
    assert resumed["num_updates"] > summary["num_updates"]  # counters continued, not restarted
    assert resumed["weights_version"] > summary["weights_version"]


def test_env_switch_restarts_workers_under_new_rules(ray_local, tmp_path, capsys):
    import ray

    from distracer.checkpoint import list_checkpoints, load_checkpoint

    config = small_config(tmp_path, "ppo", "total_env_steps=512", "env_switch.at_budget=0.5",
                          "env_switch.env.skip_penalty=-5.0")
    seen = []  # at each checkpoint: the skip penalty each rollout worker trains under

    def workers_rules(report):
        seen.append(ray.get([w.__ray_call__.remote(lambda worker: worker.config.env.skip_penalty)
                             for w in driver.actors.workers]))

    driver = Driver(config, reporter=workers_rules, handle_signals=False)
    summary = driver.run()
    assert "now train with env.skip_penalty=-5.0 (env_switch)" in "".join(capsys.readouterr())
    # The switch's own checkpoint is written under the old rules; the final one under the new.
    assert seen[0] == [0.0, 0.0] and seen[-1] == [-5.0, -5.0]
    assert summary["env_steps"] >= 512
    switch_point, *_ = list_checkpoints(tmp_path / "ppo" / "checkpoints")
    assert 256 <= load_checkpoint(switch_point).state["counters"]["env_steps"] < 512
    assert load_checkpoint(summary["checkpoint"]).state["config"]["env"]["skip_penalty"] == -5.0

    # A run resumed past its switch starts under the new rules.
    seen.clear()
    driver = Driver(small_config(tmp_path, "ppo", "total_env_steps=640", "env_switch.at_budget=0.25",
                                 "env_switch.env.skip_penalty=-5.0"),
                    resume=switch_point, reporter=workers_rules, handle_signals=False)
    driver.run()
    assert "resumed past its env switch" in "".join(capsys.readouterr())
    assert seen and all(rules == [-5.0, -5.0] for rules in seen)


# Two workers (and two shards) is the harder case for holding the ratio; one worker runs with `make test-slow`.
@pytest.mark.parametrize("workers", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_replay_ratio_holds_with_workers(ray_local, tmp_path, workers):
    config = small_config(tmp_path, "sac_drq", "total_env_steps=480", f"resources.num_workers={workers}",
                          f"replay.num_shards={workers}")
    summary = train(config, handle_signals=False)
    assert summary["replay_ratio"] == pytest.approx(0.5, rel=0.10)


def test_killed_worker_is_replaced(ray_local, tmp_path):
    import ray

    config = small_config(tmp_path, "sac_drq", "total_env_steps=400", "checkpoint.every_env_steps=96")
    killed = []

    def kill_a_worker(report):
        if report.kind == "checkpoint" and not killed:
            pid = ray.get(driver.actors.workers[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    driver = Driver(config, reporter=kill_a_worker, handle_signals=False)
    summary = driver.run()
    assert killed
    assert summary["env_steps"] >= 400
    assert summary["worker_restarts"] == 1  # one death, however many calls it failed


@pytest.mark.parametrize(
    "override, message",
    [
        ("resources.num_workers=0", "num_workers=0"),
        ("sac_drq.replay_ratio=0", "replay_ratio"),
        ("resources.learner_gpus=1", "GPU"),
        ("replay.ram_budget=20KB", "fewer than one batch"),
        ("replay.ram_budget=100TB", "exceeds"),
    ],
)
def test_bad_runs_refused_before_any_actor(ray_local, tmp_path, override, message):
    import ray

    def alive_actors() -> int:
        # GCS's actor table: works without the dashboard, which the test Ray does not start.
        return sum(1 for a in ray._private.state.actors().values() if a["State"] == "ALIVE")

    before = alive_actors()
    with pytest.raises(ConfigError, match=message):
        train(small_config(tmp_path, "sac_drq", "total_env_steps=100", override), handle_signals=False)
    assert alive_actors() == before


def test_replay_saved_with_checkpoint_survives_resume(ray_local, tmp_path):
    config = small_config(tmp_path, "sac_drq", "total_env_steps=160", "checkpoint.save_replay=true")
    first = train(config, handle_signals=False)
    assert os.path.isdir(os.path.join(first["checkpoint"], "replay", "shard_0"))
    resumed = train(small_config(tmp_path, "sac_drq", "total_env_steps=224", "checkpoint.save_replay=true"),
                    resume=first["checkpoint"], handle_signals=False)
    # With its replay back, the run trains on at once: the ratio holds over all 224 steps. Without it,
    # the first learning_starts (64) steps after the resume would only refill the replay.
    assert resumed["num_updates"] == pytest.approx(0.5 * (resumed["env_steps"] - 64), abs=2)


@pytest.mark.parametrize("seed", [0, 1, 99, 5_000, 999_999])
def test_training_env_seeds_stay_below_eval_seeds(seed):
    from distracer.runtime.worker import env_seed

    config = load_config(None, [f"seed={seed}"])
    seeds = {env_seed(config, w, e, salt) for w in range(4) for e in range(3) for salt in range(3)}
    assert len(seeds) == 36  # distinct per worker, env and restart
    assert all(0 <= s < config.eval.seed for s in seeds)


def test_resume_from_an_older_checkpoint_sets_newer_ones_aside(ray_local, tmp_path):
    from distracer.checkpoint import list_checkpoints

    config = small_config(tmp_path, "dqn", "total_env_steps=160", "checkpoint.every_env_steps=48")
    summary = train(config, handle_signals=False)
    # The epsilon logged is the one the workers act with (decayed over 100 steps here), not the learner's own.
    assert config.dqn.eps_end <= summary["learner/epsilon"] < config.dqn.eps_start
    root = tmp_path / "dqn" / "checkpoints"
    first = list_checkpoints(root)[0]
    resumed = train(small_config(tmp_path, "dqn", "total_env_steps=128"), resume=first, handle_signals=False)
    assert list_checkpoints(root)[-1] == resumed_path(resumed)  # --resume auto finds this timeline
    set_aside = list((tmp_path / "dqn" / "checkpoints_set_aside").glob("*/ckpt_*"))
    assert set_aside  # the abandoned newer checkpoints were kept, not deleted


def resumed_path(summary):
    from pathlib import Path

    return Path(summary["checkpoint"])


def test_ppo_policy_lag_overlaps_collection_and_counts_every_step(ray_local, tmp_path):
    # Workers collect the next rollout during the update; the last one collected is counted, not trained on.
    config = small_config(tmp_path, "ppo", "ppo.policy_lag=1", "total_env_steps=200")
    summary = train(config, handle_signals=False)
    rollout = config.ppo.num_steps * config.resources.num_workers * config.resources.envs_per_worker
    assert summary["num_updates"] >= 3
    assert summary["env_steps"] == (summary["num_updates"] + 1) * rollout
    assert summary["learner/approx_kl"] == summary["learner/approx_kl"]  # the stale rollout still trains


def test_ppo_budget_horizon_follows_the_time_budget(ray_local, tmp_path):
    # With 1,000 updates as the step horizon, the last of the few updates this run makes (k = num_updates - 1 before
    # it) would have lr0 * (1 - k/1000) from the steps alone; the 2-minute budget, of which the first rollouts spend
    # at least a fraction of a second (the clock starts once the actors are up), takes it lower. (A fixed bound such
    # as 0.995 * lr0 asked for 0.6 s, which a fast host's first rollouts did not always take.)
    config = small_config(tmp_path, "ppo", "total_env_steps=200", "max_minutes=2", "ppo.lr_schedule=linear",
                          "ppo.total_updates=1000", "ppo.lr_horizon=budget")
    summary = train(config, handle_signals=False)
    steps_alone = config.ppo.learning_rate * (1 - (summary["num_updates"] - 1) / 1000)
    assert summary["num_updates"] < 10
    assert 0 < summary["learner/learning_rate"] < steps_alone * (1 - 1e-5)  # > 1.2 ms of the 2 minutes


@pytest.mark.slow  # ~40 s of full stock evaluation episodes; run with `make test-slow`
def test_best_evaluation_and_timed_checkpoints_are_kept(ray_local, tmp_path):
    from distracer.checkpoint import list_checkpoints, load_checkpoint

    config = small_config(tmp_path, "ppo", "total_env_steps=384", "eval.every_env_steps=128",
                          "checkpoint.every_env_steps=100000", "checkpoint.every_minutes=0.001",
                          "checkpoint.keep=100")
    summary = train(config, handle_signals=False)
    best = list_checkpoints(tmp_path / "ppo" / "best")
    assert len(best) == 1 and summary["best_checkpoint"] == str(best[0])
    kept = load_checkpoint(best[0])  # the same verified format as every checkpoint
    assert kept.state["evaluation"]["mean"] == pytest.approx(summary["best_eval_return"])
    assert kept.state["counters"]["env_steps"] <= summary["env_steps"]
    assert set(kept.learner_state) == set(load_checkpoint(summary["checkpoint"]).learner_state)
    # every_minutes: a checkpoint after (nearly) every rollout, although every_env_steps is never reached.
    assert len(list_checkpoints(tmp_path / "ppo" / "checkpoints")) >= 3
    wall = [json.load(open(p / "state.json"))["counters"]["wall_seconds"]
            for p in list_checkpoints(tmp_path / "ppo" / "checkpoints")]
    assert wall == sorted(wall)


def test_a_run_ends_with_one_checkpoint_per_step(ray_local, tmp_path):
    """The closing evaluation re-saves the last step's weights with its score: that replaces the checkpoint of the
    same step (it used to leave ckpt_<step> and ckpt_<step>_1)."""
    from distracer.checkpoint import list_checkpoints, load_checkpoint

    config = small_config(tmp_path, "ppo", "total_env_steps=128", "checkpoint.every_env_steps=1",
                          "checkpoint.keep=100")
    summary = train(config, handle_signals=False)
    names = [p.name for p in list_checkpoints(tmp_path / "ppo" / "checkpoints")]
    assert names and not any(name.count("_") > 1 for name in names), names  # no ckpt_<step>_<n>
    last = load_checkpoint(summary["checkpoint"])
    assert last.path.name == names[-1] and last.state["counters"]["last_eval"] == summary["eval_return_mean"]
