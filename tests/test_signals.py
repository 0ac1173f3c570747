"""Ctrl-C / SIGTERM: the run stops cleanly with a final checkpoint, and resumes from it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from distracer.checkpoint import list_checkpoints, load_checkpoint

OVERRIDES = [
    "env.frame_size=48", "eval.every_env_steps=0", "eval.episodes=1",
    "eval.select_episodes=0", "off_policy.fragment_length=16",
    "replay.ram_budget=32MB", "sac_drq.batch_size=16", "sac_drq.learning_starts=64",
    "sac_drq.replay_ratio=0.25", "resources.local_num_cpus=3", "learner.device=cpu",
    "checkpoint.every_env_steps=64",
]


def train_cmd(run_dir, total: int, *extra: str) -> list[str]:
    args = OVERRIDES + [f"run_dir={run_dir}", f"total_env_steps={total}"]
    return [sys.executable, "-m", "distracer", "train", *extra] + [a for o in args for a in ("--set", o)]


# Both signals go through the one handler (runtime/driver.py); SIGTERM, what `ray job stop` and cluster
# schedulers send, stays in the default suite, Ctrl-C runs with `make test-slow` (2 minutes of the suite's 15).
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_signal_stops_with_final_checkpoint_and_resumes(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run_dir, 1_000_000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 240
    while not list_checkpoints(run_dir / "checkpoints") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert list_checkpoints(run_dir / "checkpoints"), proc.communicate()[0][-3000:]
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "received; stopping after a final checkpoint" in out
    final = load_checkpoint(run_dir)
    steps = final.state["counters"]["env_steps"]
    assert steps > 0 and steps < 1_000_000
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == steps

    # The same command with --resume auto continues from the final checkpoint's counters.
    done = subprocess.run(train_cmd(run_dir, steps + 32, "--resume", "auto"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["env_steps"] >= steps + 32
    assert after["num_updates"] >= summary["num_updates"]
