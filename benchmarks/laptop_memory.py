"""Peak memory of a laptop-preset run: PSS summed over the driver and every Ray process it starts.

Runs `distracer train` with tune_configs/<algo>.yaml + tune_configs/laptop.yaml in a subprocess (its own
embedded Ray), samples PSS (/proc/PID/smaps_rollup, so shared pages are counted once) of that process
tree every 0.5 s, and reports the peak. The replay's arrays are allocated up front but only become
resident as they fill, so it also reports a projection: the peak plus the part of the replay budget the
short run did not fill. Target: <= 4 GB (a 6 GB laptop keeps 2 GB for the OS and the rest).

    python benchmarks/laptop_memory.py [--algos sac_drq ppo dqn] [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_info, print_json_last  # noqa: E402

GB = 1e9


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def tree_pss(root: psutil.Process) -> tuple[int, int]:
    """PSS of a process and all its descendants (Ray's raylet, GCS, workers and actors), and the count."""
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    return sum(pss_bytes(p.pid) for p in procs), len(procs)


def run_one(algo: str, steps: int, run_dir: Path) -> dict:
    overrides = [f"total_env_steps={steps}", f"run_dir={run_dir}", "eval.every_env_steps=0", "eval.episodes=1",
                 "eval.select_episodes=0",
                 f"checkpoint.every_env_steps={steps}", "learner.device=auto"]
    # Learn over the last 100 steps: the learner's memory (optimiser state, batches in flight) is in the
    # peak without a CPU-only machine spending most of the benchmark on gradient updates.
    if algo in ("sac_drq", "dqn"):
        overrides.append(f"{algo}.learning_starts={max(0, steps - 100)}")
    cmd = [sys.executable, "-m", "distracer", "train", "-c", f"tune_configs/{algo}.yaml",
           "-c", "tune_configs/laptop.yaml"] + [x for o in overrides for x in ("--set", o)]
    # A separate session so the Ray it starts (raylet, GCS, actors) are all descendants we can measure.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    root = psutil.Process(proc.pid)
    peak, peak_procs, start = 0, 0, time.time()
    while proc.poll() is None:
        pss, count = tree_pss(root)
        if pss > peak:
            peak, peak_procs = pss, count
        time.sleep(0.5)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{algo} run failed:\n{output[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"peak_pss_bytes": peak, "processes_at_peak": peak_procs, "seconds": time.time() - start,
            "env_steps": summary["env_steps"]}


def replay_unfilled_bytes(algo: str, steps: int) -> int:
    """An upper bound on the replay bytes the short run left untouched: the whole budget (0 for PPO).

    The pages the run did fill are already in the measured peak, so the projection counts them twice:
    it can only overstate.
    """
    if algo == "ppo":
        return 0
    from distracer.config import load_config
    from distracer.replay.sizing import parse_bytes

    budget = parse_bytes(load_config([f"tune_configs/{algo}.yaml", "tune_configs/laptop.yaml"]).replay.ram_budget)
    return budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["sac_drq", "ppo", "dqn"])
    parser.add_argument("--steps", type=int, default=3000, help="agent steps per run")
    args = parser.parse_args()
    info = machine_info()
    print(f"machine: {info}")
    result: dict = {"machine": info, "steps": args.steps, "target_bytes": 4 * GB}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            measured = run_one(algo, args.steps, Path(tmp) / algo)
            projected = measured["peak_pss_bytes"] + replay_unfilled_bytes(algo, args.steps)
            ok = "OK" if projected <= 4 * GB else "OVER"
            print(f"{algo:8s} peak PSS {measured['peak_pss_bytes'] / GB:5.2f} GB over {measured['processes_at_peak']} "
                  f"processes ({measured['env_steps']} steps, {measured['seconds']:.0f} s); with the whole replay "
                  f"budget resident: <= {projected / GB:5.2f} GB [{ok}, target 4 GB]")
            result[algo] = {**measured, "projected_full_replay_bytes": projected}
    print_json_last(result)


if __name__ == "__main__":
    main()
