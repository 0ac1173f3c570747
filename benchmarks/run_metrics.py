"""Why a run scored what it did: its own TensorBoard metrics, summarised over training time.

Reads `RUN_DIR/tb/` (written by the driver's RunLogger) and prints, for a few points along the run, the
throughput (env steps/s, updates/s), the learner's health (PPO: approx_kl, clip_fraction, policy std,
explained variance, learning rate; SAC+DrQ / DQN: losses, alpha, epsilon) and the training episode
returns, then one JSON line. Used for docs/RESULTS.md.

    .venv/bin/python benchmarks/run_metrics.py runs/learning/ppo_s1/ppo/seed1 [--points 6] [--until 258048]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from distracer.envs.stepping import EPISODE_ENDS

WANTED = ("system/env_steps_per_s", "system/updates_per_s",
          # Fractions of wall-clock the learner updated / the workers collected; the rest is time waiting.
          "system/learner_busy", "system/workers_busy", "train/episode_return", "train/episode_length",
          "learner/approx_kl",
          "learner/clip_fraction", "learner/std", "learner/std_steer", "learner/std_accel",
          "learner/entropy", "learner/explained_variance",
          "learner/learning_rate", "learner/lr",  # learner/lr: the name in runs recorded before the rename
          "learner/critic_loss", "learner/alpha", "learner/loss", "learner/epsilon", "learner/q_mean",
          # PPO: epochs run per update (of n_epochs) and whether target_kl stopped it; the learner's turn, so
          # with policy_lag 1 the run's pace once the learner is the slower side.
          "learner/epochs", "learner/early_stopped",
          # Why training episodes ended (0/1 per episode, so a span's mean is the share; runs from 2026-12-05 on).
          *(f"train/ended_{reason}" for reason in EPISODE_ENDS))


FULL_EPISODE_FRAMES = 1000
"""CarRacing-v3's time limit: a training episode shorter than this ended early."""


def load_scalars(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (env steps, values) for the tags in WANTED that the run logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run_dir / "tb"
    if not tb.is_dir():
        raise SystemExit(f"run_metrics: {str(tb)!r} does not exist; pass a run directory of `distracer train`")
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in WANTED:
        if tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events], dtype=float))
    return out


def summarise(scalars: dict[str, tuple[np.ndarray, np.ndarray]], points: int,
              until: int | None = None) -> list[dict[str, float]]:
    """Means of each tag over `points` equal spans of env steps, up to `until` env steps (default: the run's end)."""
    last = max(int(steps.max()) for steps, _ in scalars.values() if len(steps))
    last = min(last, until) if until is not None else last
    edges = np.linspace(0, last, points + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        row = {"env_steps_to": float(hi)}
        for tag, (steps, values) in scalars.items():
            mask = (steps > lo) & (steps <= hi)
            row[tag.split("/", 1)[1]] = float(values[mask].mean()) if mask.any() else float("nan")
            if tag == "train/episode_length":  # shorter than the time limit, for any reason (train/ended_* say which)
                row["ended_early"] = float((values[mask] < FULL_EPISODE_FRAMES).mean()) if mask.any() else float("nan")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--points", type=int, default=6, help="spans of the run to average over (default 6)")
    parser.add_argument("--until", type=int, default=None,
                        help="only the run's first N env steps (e.g. the 30-minute part of a run trained on)")
    args = parser.parse_args(argv)
    if args.points < 1:
        print("run_metrics: --points must be >= 1", file=sys.stderr)
        return 2
    if args.until is not None and args.until < 1:
        print("run_metrics: --until must be >= 1", file=sys.stderr)
        return 2
    scalars = load_scalars(args.run_dir)
    if not scalars:
        print(f"run_metrics: no known scalars in {args.run_dir}/tb", file=sys.stderr)
        return 2
    rows = summarise(scalars, args.points, args.until)
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row[k]:,.0f}" if k == "env_steps_to" else f"{row[k]:.4g}" for k in keys))
    print(json.dumps({"run_dir": str(args.run_dir), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
