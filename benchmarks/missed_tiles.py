"""Why laps go unfinished: for each stock evaluation episode of a checkpoint, where its missed tiles lie.

CarRacing-v3 ends an episode before frame 1,000 only once every tile is visited, and only such laps score 900.
A tile can be missed two ways, and they need different fixes:
- *skipped*: left unvisited behind the car, which drove on past it (a cut corner, or off the road and back on
  further along): a gap before the furthest tile reached;
- *unreached*: still ahead of the car when the 1,000 frames ran out: the lap was too slow (or the car was lost).
This drives the deterministic policy on the stock env (`distracer.evaluate`'s act function, the evaluation's
seeds) and records, per episode, the return, the frames, how far round the lap the car got, the skipped gaps
(count and tiles) and the unreached tiles, then a summary and one JSON line. Diagnostics, never a score.

    .venv/bin/python benchmarks/missed_tiles.py CHECKPOINT --episodes 20 [--seed 1001000010] [--workers 2]
"""

from __future__ import annotations

import argparse
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, print_json_last

from distracer.envs import make_env
from distracer.evaluate import load_for_evaluation

TEST_SEED = 1_001_000_010
"""`distracer evaluate --seed 1001000010`, the first seed of docs/RESULTS.md's 100-episode scores."""


def lap_position(visited: list[bool]) -> int:
    """The furthest tile reached: the highest index visited (the car starts on tiles 0-1 and drives up; a car
    that drove backwards from the start would read as far round, which the frames and return give away)."""
    seen = [i for i, v in enumerate(visited) if v]
    return max(seen) if seen else 0


def classify(visited: list[bool]) -> dict[str, Any]:
    """Skipped gaps (unvisited tiles before the furthest reached) and the unreached tail after it."""
    furthest = lap_position(visited)
    gaps, run = [], 0
    for i in range(1, furthest):
        if not visited[i]:
            run += 1
        elif run:
            gaps.append(run)
            run = 0
    if run:
        gaps.append(run)
    return {"tiles": len(visited), "furthest": furthest, "skipped_gaps": gaps, "skipped": sum(gaps),
            "unreached": len(visited) - 1 - furthest}


def episode(args: tuple[str, int]) -> dict[str, Any]:
    checkpoint, seed = args
    import torch

    torch.set_num_threads(1)
    loaded = load_for_evaluation(checkpoint)
    act = loaded.source.act_fn()
    env = make_env(loaded.env_config, seed=seed, stock=True)
    obs, _ = env.reset()
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs))
        if terminated or truncated:
            break
    visited = [bool(t.road_visited) for t in env.unwrapped.road]
    out = {"seed": seed, "return": float(np.asarray(info["episode"]["r"]).item()),
           "frames": int(np.asarray(info["episode"]["l"]).item()), "finished": all(visited), **classify(visited)}
    env.close()
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    unfinished = [r for r in rows if not r["finished"]]
    finished = [r for r in rows if r["finished"]]
    return {
        "episodes": len(rows), "mean": float(np.mean([r["return"] for r in rows])),
        "laps_finished": len(finished),
        "finished_lap_frames_mean": float(np.mean([r["frames"] for r in finished])) if finished else None,
        "unfinished_with_skips_only": sum(1 for r in unfinished if r["skipped"] and not r["unreached"]),
        "unfinished_unreached_only": sum(1 for r in unfinished if r["unreached"] and not r["skipped"]),
        "unfinished_both": sum(1 for r in unfinished if r["skipped"] and r["unreached"]),
        "tiles_skipped": sum(r["skipped"] for r in rows), "tiles_unreached": sum(r["unreached"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="first evaluation seed")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.episodes < 1 or args.workers < 1:
        raise SystemExit("missed_tiles: --episodes and --workers must be >= 1")
    path = str(Path(args.checkpoint))
    tasks = [(path, args.seed + i) for i in range(args.episodes)]
    with get_context("spawn").Pool(args.workers) as pool:
        rows = sorted(pool.map(episode, tasks), key=lambda r: r["seed"])
    for r in rows:
        print(f"seed {r['seed']}: {r['return']:7.1f} in {r['frames']:4d} frames; reached tile {r['furthest']} of "
              f"{r['tiles']}; skipped {r['skipped']} in {len(r['skipped_gaps'])} gap(s), unreached {r['unreached']}")
    summary = summarise(rows)
    print("missed_tiles: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in summary.items()))
    print_json_last({"benchmark": "missed_tiles", "checkpoint": path, "machine": machine_info(), "summary": summary,
                     "episodes": rows})


if __name__ == "__main__":
    main()
