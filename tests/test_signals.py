"""Ctrl-C / SIGTERM: the run stops cleanly with a final checkpoint, and resumes from it."""

from __future__ import annotations

import contextlib
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


def start_in_own_group(run_dir) -> subprocess.Popen:
    """`distracer train` as a scheduler starts a job: a process group of its own, which it then signals whole."""
    return subprocess.Popen(train_cmd(run_dir, 1_000_000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for_checkpoint(proc: subprocess.Popen, run_dir) -> None:
    deadline = time.time() + 240
    while not list_checkpoints(run_dir / "checkpoints") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert list_checkpoints(run_dir / "checkpoints"), proc.communicate()[0][-3000:]


# SIGTERM to the group is what `timeout`, systemd and container runtimes send; SIGHUP a closed terminal; SIGUSR1
# Slurm's --signal warning. One handler serves them all (runtime/driver.py STOP_SIGNALS): SIGTERM in the default
# suite, the others with `make test-slow`.
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_signal_to_the_whole_process_group_ends_with_a_final_checkpoint(tmp_path, sig):
    import os

    run_dir = tmp_path / "run"
    proc = start_in_own_group(run_dir)
    wait_for_checkpoint(proc, run_dir)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert f"{sig.name} received; stopping after a final checkpoint" in out
    assert "died" not in out and "rebuilding" not in out, out[-3000:]  # Ray's processes did not hear it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert load_checkpoint(run_dir).state["counters"]["env_steps"] == summary["env_steps"]


def test_a_second_signal_stops_at_once_leaving_the_sealed_checkpoints_intact(tmp_path):
    import os
    import threading

    run_dir = tmp_path / "run"
    proc = start_in_own_group(run_dir)
    wait_for_checkpoint(proc, run_dir)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + 60
    while not any("received; stopping" in line for line in lines) and time.time() < deadline:
        time.sleep(0.01)  # the first is taken (the driver said so) before the second is sent
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM received again, so stopped at once; the newest checkpoint is" in out
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        load_checkpoint(ckpt)  # every one sealed and verified: nothing half-written


def test_a_recovered_shard_death_reads_as_one_line_not_rays_stacks(tmp_path):
    """A replay shard killed mid-run: the driver rebuilds the run and finishes; the log says so in its own line,
    without Ray's 'Unhandled error' stacks for every fragment push the dead shard failed (consumed, not dropped)."""
    import psutil

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run_dir, 600), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(proc, run_dir)
    shards = [p for p in psutil.Process(proc.pid).children(recursive=True)
              if "ReplayShard" in " ".join(p.cmdline())]
    assert shards, "no replay shard process found under the driver"
    shards[0].kill()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "rebuilding the run" in out, out[-3000:]
    assert "Unhandled error" not in out, out[-6000:]
    assert json.loads((run_dir / "summary.json").read_text())["recoveries"] == 1


@pytest.mark.slow  # ~1 min: a real run under the Slurm recipe's shell, without Slurm
def test_the_slurm_recipe_passes_the_warning_to_the_driver_alone(tmp_path):
    """cluster/slurm_train.sbatch run as Slurm would (its shell in a group of its own), then SIGUSR1 to that shell
    (`--signal=B:USR1`): the driver writes its final checkpoint and the script exits 0 (no requeue outside Slurm)."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    run_dir = tmp_path / "run"
    args = ["--algo", "sac_drq", "--preset", "cpu"] + [a for o in OVERRIDES + [f"run_dir={run_dir}",
                                                                             "total_env_steps=1000000"]
                                                       for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(["bash", str(repo / "cluster" / "slurm_train.sbatch")], cwd=repo, text=True,
                            env={**env, "RUN_ARGS": " ".join(args)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_checkpoint(proc, run_dir)
    os.kill(proc.pid, signal.SIGUSR1)  # the batch shell only, as B: does
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGUSR1 received; stopping after a final checkpoint" in out and "requeueing" not in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert load_checkpoint(run_dir).state["counters"]["env_steps"] == summary["env_steps"]


def test_a_stop_that_kills_every_process_of_the_job_ends_in_one_line_without_a_rebuild(tmp_path):
    """What systemd's default KillMode and Slurm's job end do: SIGTERM to the driver and to every Ray process under
    it at once. The learner and workers die with it, so no final checkpoint can be written: the run is never rebuilt,
    says so in one line naming the newest checkpoint, and exits 0 promptly; that checkpoint loads."""
    import os

    import psutil

    run_dir = tmp_path / "run"
    proc = start_in_own_group(run_dir)
    wait_for_checkpoint(proc, run_dir)
    everyone = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    started = time.time()
    for pid in everyone:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "rebuilding the run" not in out, out[-3000:]
    assert ("stopped as asked, but" in out and "--resume auto continues from it" in out) or \
        "distracer: done:" in out, out[-3000:]
    assert time.time() - started < 45, f"took {time.time() - started:.0f} s to stop"
    load_checkpoint(run_dir)
