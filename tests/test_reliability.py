"""Fault injection on a real local Ray: SIGKILL a part of a running training run and check what matters: the run
goes on (or stops with one line where the config says so), counters equal what the learner and the replay hold,
and the newest checkpoint loads. docs/RELIABILITY.md lists what each failure costs."""

from __future__ import annotations

import json
import os
import signal

import pytest
from test_runtime import small_config

from distracer.checkpoint import list_checkpoints, load_checkpoint
from distracer.errors import ConfigError
from distracer.runtime.driver import Driver


def pid_of(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()))


def kill_once(target):
    """A reporter that SIGKILLs `target(driver)`'s process at the run's first checkpoint."""
    killed: list[int] = []

    def reporter(report):
        if report.kind == "checkpoint" and not killed:
            pid = pid_of(target(reporter.driver))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    reporter.killed = killed
    return reporter


def run_with(config, reporter) -> dict:
    driver = Driver(config, reporter=reporter, handle_signals=False)
    reporter.driver = driver
    return driver.run()


def replay_transitions(ckpt) -> int:
    """Transitions the checkpoint's replay holds: its entries less the reset frames (first=True) that start each
    stream's episodes (the shards' Arrow files, read directly)."""
    import pyarrow as pa

    total = 0
    for manifest in (ckpt / "replay").glob("shard_*/replay.json"):
        data = manifest.parent / json.loads(manifest.read_text())["data"]
        with pa.memory_map(str(data)) as source:
            first = pa.ipc.open_file(source).read_all().column("first").to_pylist()
        total += len(first) - sum(first)
    return total


def assert_consistent(ckpt) -> None:
    """A checkpoint is one moment: the learner's updates and the replay's transitions match its counters."""
    loaded = load_checkpoint(ckpt)
    counters = loaded.state["counters"]
    assert loaded.learner_state["num_updates"] == counters["num_updates"]
    if (ckpt / "replay").is_dir():
        assert replay_transitions(ckpt) == counters["env_steps"]  # the runs here stay within capacity


# ~1 min each: with `make test-slow`, to keep the default suite under 15 minutes (measured 15+ with them).
@pytest.mark.slow
@pytest.mark.parametrize("part", ["learner", "shard"])
def test_a_killed_learner_or_shard_rebuilds_the_run_from_its_newest_checkpoint(ray_local, tmp_path, part):
    config = small_config(tmp_path, "dqn", "total_env_steps=320", "checkpoint.every_env_steps=96",
                          "checkpoint.save_replay=true", "checkpoint.keep=10")
    reporter = kill_once(lambda d: d.actors.learner if part == "learner" else d.actors.shards[0])
    summary = run_with(config, reporter)
    assert reporter.killed
    assert summary["recoveries"] == 1 and summary["worker_restarts"] == 0
    assert summary["env_steps"] >= 320
    # The replay came back with the checkpoint: the ratio holds over the whole run, as if nothing happened.
    assert summary["num_updates"] == pytest.approx(0.5 * (summary["env_steps"] - 64), abs=2)
    for ckpt in list_checkpoints(tmp_path / "dqn" / "checkpoints"):
        assert_consistent(ckpt)
    assert load_checkpoint(summary["checkpoint"]).state["counters"]["recoveries"] == 1


def test_when_recoveries_are_used_up_the_run_stops_with_one_line(ray_local, tmp_path):
    config = small_config(tmp_path, "dqn", "total_env_steps=320", "checkpoint.every_env_steps=96",
                          "resources.max_recoveries=0")
    reporter = kill_once(lambda d: d.actors.learner)
    with pytest.raises(ConfigError, match=r"the learner died after 0 recover\(ies\) .*--resume auto") as info:
        run_with(config, reporter)
    assert "\n" not in str(info.value)
    assert load_checkpoint(tmp_path / "dqn").state["counters"]["env_steps"] >= 96  # what --resume auto takes


@pytest.mark.slow
def test_a_killed_ppo_worker_costs_one_rollout_not_the_run(ray_local, tmp_path):
    config = small_config(tmp_path, "ppo", "total_env_steps=320", "checkpoint.every_env_steps=64")
    reporter = kill_once(lambda d: d.actors.workers[0])
    summary = run_with(config, reporter)
    assert reporter.killed
    assert summary["worker_restarts"] == 1 and summary["recoveries"] == 0
    rollout = config.ppo.num_steps * config.resources.num_workers * config.resources.envs_per_worker
    assert summary["env_steps"] == summary["num_updates"] * rollout  # the lost round was neither counted nor trained


@pytest.mark.slow
def test_every_checkpoint_is_one_consistent_moment(ray_local, tmp_path):
    config = small_config(tmp_path, "sac_drq", "total_env_steps=256", "checkpoint.every_env_steps=48",
                          "checkpoint.save_replay=true", "checkpoint.keep=100", "resources.num_workers=2",
                          "replay.num_shards=2")
    Driver(config, handle_signals=False).run()
    checkpoints = list_checkpoints(tmp_path / "sac_drq" / "checkpoints")
    assert len(checkpoints) >= 4
    for ckpt in checkpoints:
        assert_consistent(ckpt)


def test_unfinished_writes_of_a_killed_run_are_removed_at_start(tmp_path):
    leftover = tmp_path / "dqn" / "checkpoints" / ".ckpt_000000000096.tmp-999999999-1"
    (leftover / "replay").mkdir(parents=True)
    driver = Driver(small_config(tmp_path, "dqn", "total_env_steps=64"), handle_signals=False)  # before Ray starts
    assert not leftover.exists() and driver.removed_tmp == [leftover]


@pytest.mark.slow  # three real runs killed at random moments and resumed: ~2 min
def test_a_driver_killed_at_random_moments_resumes_from_an_intact_checkpoint(tmp_path):
    """SIGKILL the whole process group of `distracer train` (driver and its embedded Ray) at random delays,
    some inside checkpoint writes (one every 16 steps here); each time the newest checkpoint loads and
    `--resume auto` continues from it, and no temporary directory outlives the next start."""
    import random
    import subprocess
    import sys
    import time

    from test_runtime import ALGO, SMALL

    run_dir = tmp_path / "run"
    overrides = SMALL + ALGO["dqn"] + [f"run_dir={run_dir}", "total_env_steps=100000", "checkpoint.every_env_steps=16",
                                       "checkpoint.save_replay=true", "checkpoint.keep=2"]
    cmd = [sys.executable, "-m", "distracer", "train", "--resume", "auto"]
    cmd += [a for o in overrides for a in ("--set", o)]
    rng = random.Random(0)
    steps_seen: list[int] = []

    def newest_step() -> int:
        found = list_checkpoints(run_dir / "checkpoints")
        return int(found[-1].name.split("_")[1]) if found else -1

    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and newest_step() <= (steps_seen[-1] if steps_seen else -1):
                time.sleep(0.2)  # until this start has sealed a checkpoint of its own
            time.sleep(rng.uniform(0.0, 3.0))  # then die anywhere, inside a write or not
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        newest = list_checkpoints(run_dir / "checkpoints")[-1]
        loaded = load_checkpoint(newest)  # verifies every checksum
        assert_consistent(newest)
        steps_seen.append(loaded.state["counters"]["env_steps"])
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]  # each resume went on from the last
    # A last start removes the temporary directories of writes the kills cut short.
    Driver(small_config(tmp_path, "dqn", f"run_dir={run_dir}", "total_env_steps=1"), handle_signals=False)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
