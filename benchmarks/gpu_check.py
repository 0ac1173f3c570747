"""The GPU check, in one call: learner speed on CUDA in fp32, bf16 and fp16 against the CPU, and a short `make train`
that must pick SAC+DrQ and run its learner on CUDA.

For a session that is lent a GPU machine: it installs nothing beyond `make setup`, fits in about 8 minutes, and
prints each figure and one JSON line. What it measures:
- SAC+DrQ (batch 256) and PPO (minibatch 64, whole rollouts) gradient updates/s of distracer's own learners, as
  `benchmarks/learner_speed.py` builds them (84x84x4 uint8 observations), on the CPU (fp32, `--threads` torch
  threads) and on CUDA in each precision, with the ratio to the CPU figure;
- `distracer train --algo auto --preset auto` for `--train-steps` agent steps: the recipe it chose (the first line),
  the learner's device (`summary.json`'s placement), the run's exit status and agent steps/s.
Without CUDA it runs the CPU rows only and says so in its output and JSON (`cuda: false`): the GPU rows were not run.

    .venv/bin/python benchmarks/gpu_check.py [--seconds 20] [--train-steps 4000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_info, print_json_last
from learner_speed import CASES, obs_pool, off_policy_sides, ppo_sides

REPO = Path(__file__).resolve().parent.parent
CHECKED = ("sac_drq_b256", "ppo_mb64")
PRECISIONS = ("fp32", "bf16", "fp16")


def updates_per_s(case_name: str, device: str, precision: str, seconds: float) -> float:
    """Gradient updates/s of our learner alone, after a warm-up, over about `seconds` of wall-clock."""
    case = next(c for c in CASES if c.name == case_name)
    rng = np.random.default_rng(0)
    pool = obs_pool(rng)
    if case.algo == "ppo":
        sides = ppo_sides(case, device, pool, rng, rollout_size=256, precision=precision)
    else:
        sides = off_policy_sides(case, device, pool, rng, precision=precision)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sides.ours(4)  # warm-up: cuDNN autotuning, allocator, first-call costs
    sync()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += sides.ours(4 if device == "cpu" else 32)
    sync()
    return done / (time.perf_counter() - start)


def short_train(steps: int, timeout_s: float) -> dict[str, Any]:
    """`distracer train --algo auto --preset auto` for `steps` agent steps in a temp dir: what it chose and where
    its learner ran."""
    with tempfile.TemporaryDirectory(prefix="distracer-gpu-check-") as tmp:
        cmd = [sys.executable, "-m", "distracer", "train", "--algo", "auto", "--preset", "auto",
               "--set", f"total_env_steps={steps}", "--set", f"run_dir={tmp}/run", "--set", "eval.every_env_steps=0",
               "--set", "eval.episodes=1", "--set", "eval.select_episodes=0"]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"did not finish within {timeout_s:g} s"}
        out = done.stdout + done.stderr
        chose = re.search(r"^distracer: (.*); learner on (\w+)", out, re.M)
        summary_path = Path(tmp) / "run" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        device = summary.get("placement", {}).get("learner_device")
        result = {"returncode": done.returncode, "seconds": round(time.perf_counter() - start, 1),
                  "chose": chose.group(1) if chose else None, "learner_device": device,
                  "env_steps_per_s": summary.get("env_steps_per_s"), "tail": out[-1500:] if done.returncode else ""}
        result["ok"] = bool(done.returncode == 0 and chose and "sac_drq" in chose.group(1)
                            and device is not None and device.startswith("cuda"))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed wall-clock per row")
    parser.add_argument("--train-steps", type=int, default=4000, help="agent steps of the short make-train run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the CPU rows")
    parser.add_argument("--skip-train", action="store_true", help="learner rows only")
    args = parser.parse_args()
    if args.seconds <= 0 or args.train_steps < 1 or args.threads < 1:
        raise SystemExit("gpu_check: --seconds, --train-steps and --threads must be positive")
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    print(f"gpu_check: {'CUDA ' + torch.cuda.get_device_name(0) if cuda else 'no CUDA device: CPU rows only'}; "
          f"torch {torch.__version__}", flush=True)
    rows = []
    for name in CHECKED:
        cpu = updates_per_s(name, "cpu", "fp32", args.seconds)
        rows.append({"case": name, "device": "cpu", "precision": "fp32", "updates_per_s": cpu, "vs_cpu": 1.0})
        print(f"gpu_check: {name:<13} cpu  fp32 {cpu:9.1f} updates/s ({args.threads} thread(s))", flush=True)
        for precision in PRECISIONS if cuda else ():
            rate = updates_per_s(name, "cuda", precision, args.seconds)
            rows.append({"case": name, "device": "cuda", "precision": precision, "updates_per_s": rate,
                         "vs_cpu": rate / cpu})
            print(f"gpu_check: {name:<13} cuda {precision} {rate:9.1f} updates/s ({rate / cpu:.1f}x the CPU)",
                  flush=True)
    train = None
    if cuda and not args.skip_train:
        train = short_train(args.train_steps, timeout_s=300)
        print(f"gpu_check: make train's recipe: {train.get('chose')}; learner on {train.get('learner_device')}; "
              f"{'OK' if train['ok'] else 'NOT OK'}", flush=True)
    elif not cuda:
        print("gpu_check: the make-train check needs CUDA: not run", flush=True)
    print_json_last({"benchmark": "gpu_check", "machine": machine_info(), "cuda": cuda,
                     "device_name": torch.cuda.get_device_name(0) if cuda else None, "rows": rows, "train": train})


if __name__ == "__main__":
    main()
