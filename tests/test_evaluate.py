"""`distracer evaluate`: the stock env, checkpoint detection, videos, parallel episodes on Ray, bad input.

Episodes on the stock CarRacing-v3 cost ~5 ms a step here, so most tests cut them with --max-steps;
one test runs a whole episode (action repeat 4) to check the reference return and the video length.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distracer.algos import make_learner
from distracer.algos.base import ActionSpec, DeviceConfig
from distracer.checkpoint import MANIFEST, detect_format, save_checkpoint
from distracer.config import load_config
from distracer.envs import EnvConfig, make_env
from distracer.errors import ConfigError
from distracer.evaluate import (
    TEST_SEED_OFFSET,
    evaluate_checkpoint,
    evaluate_policy,
    learner_from_checkpoint,
    load_for_evaluation,
    run_episode,
)
from distracer.video import read_video_info

ALGO_SETTINGS = {
    "ppo": ["algo=ppo", "ppo.num_envs=1", "ppo.num_steps=64", "ppo.minibatch_size=32"],
    "dqn": ["algo=dqn", "env.action_space=discrete"],
    "sac_drq": ["algo=sac_drq"],
}


def make_checkpoint(root: Path, algo: str, *extra: str, step: int = 0, seed: int = 1) -> Path:
    """A checkpoint of a freshly initialised learner, written by the real save_checkpoint (no training)."""
    config = load_config(None, ALGO_SETTINGS[algo] + ["learner.device=cpu", f"run_dir={root}", f"seed={seed}", *extra])
    env = make_env(config.env, stock=True)
    learner = make_learner(config.algo, config.algo_config, env.observation_space.shape,
                           ActionSpec.from_space(env.action_space), DeviceConfig("cpu"), config.seed)
    env.close()
    state = {"algo": config.algo, "config": config.to_dict(), "counters": {"env_steps": step}}
    return save_checkpoint(root / "checkpoints", learner.state_dict(), state, step)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distracer", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {algo: make_checkpoint(root / algo, algo) for algo in ALGO_SETTINGS}


# ----------------------------------------------------------------------------------------------------
# The environment


def test_rendering_video_frames_leaves_observations_and_rewards_unchanged():
    def rollout(render: bool) -> tuple[np.ndarray, np.ndarray]:
        env = make_env(EnvConfig(), seed=TEST_SEED_OFFSET, stock=True, render_mode="rgb_array" if render else None)
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        frames, rewards = [obs], []
        for _ in range(25):
            obs, reward, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            frames.append(obs)
            rewards.append(reward)
            if render:
                assert env.render().shape == (400, 600, 3)
        env.close()
        return np.stack(frames), np.array(rewards)

    plain, rendered = rollout(False), rollout(True)
    np.testing.assert_array_equal(plain[0], rendered[0])
    np.testing.assert_array_equal(plain[1], rendered[1])


# ----------------------------------------------------------------------------------------------------
# Checkpoint detection


def test_detects_format_and_algorithm_of_each_kind(ckpts, tmp_path):
    for algo, ckpt in ckpts.items():
        assert detect_format(ckpt) == ("distracer", ckpt)
        assert detect_format(ckpt.parent.parent) == ("distracer", ckpt)  # the run dir
        loaded = load_for_evaluation(ckpt)
        assert (loaded.fmt, loaded.algo) == ("distracer", algo)
        assert loaded.env_config.action_space == ("discrete" if algo == "dqn" else "continuous")

    # Tune: each checkpoint_N holds a copy of a distracer checkpoint (Checkpoint.from_directory); the trial
    # dir holds several, and the newest by env steps is taken, whatever its name.
    trial = tmp_path / "trial_0"
    old = make_checkpoint(tmp_path / "run", "ppo", step=64)
    new = make_checkpoint(tmp_path / "run", "ppo", step=128)
    shutil.copytree(old, trial / "checkpoint_000001")
    shutil.copytree(new, trial / "checkpoint_000000")
    assert detect_format(trial / "checkpoint_000001") == ("distracer", trial / "checkpoint_000001")
    assert detect_format(trial) == ("distracer", trial / "checkpoint_000000")
    # A dir nesting the checkpoint dir deeper (e.g. a job's storage folder) is searched too.
    nested = tmp_path / "job" / "outputs"
    shutil.copytree(new, nested / "ckpt_x")
    assert detect_format(tmp_path / "job")[1] == nested / "ckpt_x"
    # Several runs (a Tune experiment) are ambiguous: refused, naming what to pass instead.
    make_checkpoint(tmp_path / "exp" / "trial_a", "ppo", seed=1)
    make_checkpoint(tmp_path / "exp" / "trial_b", "ppo", seed=2)
    with pytest.raises(ConfigError, match="2 different runs"):
        detect_format(tmp_path / "exp")


def test_saved_gpu_device_does_not_stop_cpu_evaluation(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run", "dqn")
    state = json.loads((ckpt / "state.json").read_text())
    state["config"]["learner"]["device"] = "cuda:3"  # as a GPU-trained run saves it
    (ckpt / "state.json").write_text(json.dumps(state))
    manifest = json.loads((ckpt / MANIFEST).read_text())
    import hashlib

    manifest["files"]["state.json"] = hashlib.sha256((ckpt / "state.json").read_bytes()).hexdigest()
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    learner, config, _ = learner_from_checkpoint(ckpt)
    assert str(learner.device) == "cpu" and config.algo == "dqn"


# ----------------------------------------------------------------------------------------------------
# Evaluation through the command line


def test_evaluate_cli_prints_scores_and_writes_json(ckpts, tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli("evaluate", "--checkpoint", str(ckpts["ppo"]), "--episodes", "1", "--max-steps", "20",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "NOT a CarRacing score" in proc.stdout and "score" in proc.stdout
    report = json.loads(out.read_text())
    first = 1_000_000 + TEST_SEED_OFFSET  # the checkpoint's eval.seed + the offset
    assert report["algo"] == "ppo" and report["format"] == "distracer" and report["env"] == "CarRacing-v3"
    assert report["seeds"] == [first] and report["lengths"] == [20] and report["deterministic"]
    assert report["solved"] is False and report["max_steps"] == 20
    # The same policy and seed through the driver's function: the same return (deterministic, same env).
    loaded = load_for_evaluation(ckpts["ppo"])
    again = evaluate_policy(loaded.source.weights, loaded.env_config, [first], max_steps=20)
    assert again.returns == pytest.approx(report["returns"])
    assert f"return {report['returns'][0]:7.1f}" in proc.stdout


def test_full_episode_scores_the_env_return_and_video_has_every_frame(tmp_path):
    # This untrained SAC policy drives off the playfield within ~300 steps (the env ends the episode with
    # -100): a complete episode, scored by the env's own statistics, for a third of a 1000-step one's cost.
    ckpt = make_checkpoint(tmp_path / "run", "sac_drq", "env.action_repeat=4")
    videos = tmp_path / "videos"
    report = evaluate_checkpoint(ckpt, episodes=1, video_dir=videos, side_by_side=True, log=lambda _: None)
    [length], [ret], [seed] = report["lengths"], report["returns"], report["seeds"]
    assert 0 < length <= 1000  # raw env steps, counted by the env's own episode statistics
    assert np.isfinite(ret) and report["max_steps"] is None
    [video] = report["videos"]
    frames, width, height = read_video_info(video)
    assert Path(video).name == f"episode_seed{seed}.mp4"
    assert frames == 1 + -(-length // 4)  # the reset frame, then one per agent step (4 env steps each)
    assert (width, height) == (600 + 400, 400)  # the env frame and the agent's input beside it


def test_each_episode_reports_how_long_the_car_stood_still():
    """A car braked from the start stands still the whole time; one given gas does not."""
    config = EnvConfig(action_repeat=2, frame_size=64, frame_stack=2)
    braked = run_episode(lambda obs: np.array([0.0, -1.0], np.float32), config, seed=3, max_steps=40)
    assert braked.standstill == 40 * 2  # frames (agent steps x action repeat)
    driven = run_episode(lambda obs: np.array([0.0, 0.5], np.float32), config, seed=3, max_steps=40)
    assert driven.standstill <= 2 * 2  # at rest for at most the first agent step or two


def test_each_episode_reports_the_track_tiles_it_missed():
    """A car braked from the start visits only the start tiles; every other tile is reported missed."""
    from distracer.envs import make_env

    config = EnvConfig(action_repeat=2, frame_size=64, frame_stack=2)
    braked = run_episode(lambda obs: np.array([0.0, -1.0], np.float32), config, seed=3, max_steps=20)
    env = make_env(config, seed=3, stock=True)
    env.reset()
    tiles = len(env.unwrapped.track)
    assert braked.tiles_missed == tiles - env.unwrapped.tile_visited_count  # all but the tiles under the car
    assert tiles - 3 <= braked.tiles_missed < tiles


def test_parallel_episodes_on_ray_match_sequential_ones(ray_local, ckpts, tmp_path):
    kwargs = {"episodes": 3, "max_steps": 8, "log": lambda _: None}
    parallel = evaluate_checkpoint(ckpts["sac_drq"], workers=2, video_dir=tmp_path / "v", **kwargs)
    sequential = evaluate_checkpoint(ckpts["sac_drq"], workers=1, **kwargs)
    assert parallel["workers"] == 2 and sequential["workers"] == 1
    assert parallel["seeds"] == sequential["seeds"] == sorted(parallel["seeds"])
    assert parallel["returns"] == pytest.approx(sequential["returns"])
    # Videos come back from the Ray tasks as bytes and land in the asked-for dir, one per episode.
    for path in parallel["videos"]:
        assert read_video_info(path)[0] == 9


# ----------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, no traceback, nothing run


def _corrupt(ckpt: Path) -> Path:
    learner = ckpt / "learner.pt"
    learner.write_bytes(learner.read_bytes()[:1000])  # truncated after the manifest was sealed
    return ckpt


def _unsealed(ckpt: Path) -> Path:
    (ckpt / MANIFEST).unlink()  # a checkpoint killed before it was sealed
    return ckpt


def _random_pt(tmp_path: Path) -> Path:
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "model.pt")
    return tmp_path / "model.pt"


def _random_zip(tmp_path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.zip", "w") as archive:
        archive.writestr("notes.txt", "not a model")
    return tmp_path / "model.zip"


@pytest.mark.parametrize("case, message", [
    ("corrupt", "checksum mismatch"),
    ("unsealed", "incomplete"),
    ("random_pt", "neither a Stable-Baselines3"),
    ("random_zip", "neither a Stable-Baselines3"),
    ("missing", "does not exist"),
    ("video_dir", "cannot be written"),
    ("training_seed", "training seed range"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case, message):
    from distracer.cli import main

    ckpt = make_checkpoint(tmp_path / "run", "dqn")
    args = ["--episodes", "1", "--max-steps", "5", "--json", str(tmp_path / "r.json")]
    path = {"corrupt": lambda: _corrupt(ckpt), "unsealed": lambda: _unsealed(ckpt),
            "random_pt": lambda: _random_pt(tmp_path), "random_zip": lambda: _random_zip(tmp_path),
            "missing": lambda: tmp_path / "nope"}.get(case, lambda: ckpt)()
    if case == "video_dir":
        (tmp_path / "a_file").write_text("")
        args += ["--video", str(tmp_path / "a_file" / "videos")]
    if case == "training_seed":
        args += ["--seed", "10"]
    # In-process (a subprocess per case costs seconds of imports): any exception but ConfigError would
    # escape main() and fail the test, so exit 2 here means the one-line path was taken.
    assert main(["evaluate", "--checkpoint", str(path), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distracer: error:") and message in lines[0], captured.err
    assert "return" not in captured.out  # refused before any episode ran
    assert not (tmp_path / "r.json").exists()


def test_bad_input_from_the_real_command_has_no_traceback(tmp_path):
    proc = run_cli("evaluate", "--checkpoint", str(_random_pt(tmp_path)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("distracer: error:") and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------------
# What a training run leaves for evaluation and plots


def test_train_run_writes_tensorboard_progress_and_evaluates(ray_local, tmp_path, capsys):
    from distracer.runtime.driver import train

    config = load_config(None, [
        "algo=dqn", "env.action_space=discrete", "env.frame_size=48", "dqn.batch_size=16", "dqn.learning_starts=32",
        "dqn.replay_ratio=0.25", "total_env_steps=96", "eval.every_env_steps=0", "eval.episodes=1",
        "eval.select_episodes=0",
        "off_policy.fragment_length=16", "resources.local_num_cpus=4", "replay.ram_budget=64MB",
        "learner.device=cpu", f"run_dir={tmp_path / 'run'}"])
    train(config, handle_signals=False)
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[dqn]")]
    assert progress, out
    for part in ("steps", "steps/s", "upd/s", "replay", "eval", "ETA"):
        assert part in progress[-1]
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"eval/return_mean", "system/env_steps_per_s", "system/learner_busy", "system/workers_busy"} <= set(tags)
    report = evaluate_checkpoint(tmp_path / "run", episodes=1, max_steps=5, log=lambda _: None)
    assert report["algo"] == "dqn" and report["checkpoint_info"]["env_steps"] >= 96


def test_train_names_the_best_checkpoint_when_an_earlier_evaluation_beat_the_last():
    from distracer.cli import done_lines

    summary = {"env_steps": 1000, "num_updates": 5, "eval_return_mean": 593.7, "eval_return_std": 279.6,
               "best_eval_return": 906.9, "checkpoint": "r/checkpoints/ckpt_2", "best_checkpoint": "r/best/ckpt_1"}
    final, best = done_lines(summary)
    assert final.startswith("distracer: done: 1,000 env steps") and final.endswith("checkpoint r/checkpoints/ckpt_2")
    assert "906.9: r/best/ckpt_1" in best and "--checkpoint r/best/ckpt_1 --episodes 100" in best
    assert len(done_lines({**summary, "best_eval_return": 593.7})) == 1  # the last was the best
    assert len(done_lines({k: v for k, v in summary.items() if k != "best_checkpoint"})) == 1
