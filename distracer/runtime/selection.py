"""The final selection: which of a run's last policies it recommends, kept as `run_dir/best`.

Why: a periodic evaluation scores each policy on a handful of tracks (`eval.episodes`, 5), and the highest of a
run's dozen such scores is mostly luck: a `best/` kept for 894.3 on 5 tracks scored 827.3 over 30 unseen ones,
below the run's last checkpoint (847.1 over 50; docs/RESULTS.md found the same with 10 tracks). So at the end of
a run the driver scores its candidates (the final checkpoint, the step checkpoints just before it, and the
periodic best) on the *same* `eval.select_episodes` tracks, a seed range of their own, and keeps the final
checkpoint unless another beats it there by more than `SELECT_Z` paired standard errors of the mean difference
(a one-sided test at 95%: the tracks are shared, so a track's own difficulty cancels). PPO's learning rate
decays to 0 at the schedule's end, so the final policy is the converged one; a candidate must earn its place.

The episodes run as Ray tasks on the cores that training has just freed, on distracer's fast simulator, whose
episodes are the stock env's frame for frame (tests/test_fast_env.py), at about a quarter of the stock env's
cost. Selection scores pick a checkpoint; a claim of a score is `distracer evaluate` on the stock env, on
tracks of its own (TEST_SEED_OFFSET), never on these.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distracer.checkpoint import (
    STATE_FILE,
    list_checkpoints,
    load_checkpoint,
    refuse_inside_checkpoint,
    save_checkpoint,
)
from distracer.errors import ConfigError
from distracer.evaluate import EvalResult, evaluate_parallel, load_for_evaluation

SELECT_SEED_OFFSET = 500_000_000
"""Selection tracks start at eval.seed + this: above every periodic evaluation's (eval.seed + 1000 x weights
version) and below the test seeds `distracer evaluate` defaults to (eval.seed + 1e9)."""
SELECT_Z = 1.645
"""A candidate replaces the final checkpoint only if its mean is higher by more than this many paired standard
errors (one-sided, 95%)."""


@dataclass
class Scored:
    """One candidate and its episodes on the selection tracks."""

    path: Path
    label: str
    """'final', 'checkpoint' (a step checkpoint before the final) or 'periodic best' (run_dir/best)."""
    env_steps: int
    result: EvalResult


@dataclass
class Selection:
    """The outcome: every candidate's score on the same tracks, the one chosen, and why."""

    seeds: list[int]
    scored: list[Scored]
    chosen: int
    """Index into `scored`."""
    margins: list[float]
    """Per candidate, the mean gain over the final checkpoint it needed (z x paired standard error; 0 for the
    final itself, NaN where it cannot be computed)."""

    @property
    def best(self) -> Scored:
        return self.scored[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        """The record kept in the chosen checkpoint's state.json (`selection`) and the run's summary."""
        return {"seeds": [self.seeds[0], self.seeds[-1]], "episodes": len(self.seeds), "z": SELECT_Z,
                "chosen": str(self.best.path),
                "candidates": [{"checkpoint": str(s.path), "label": s.label, "env_steps": s.env_steps,
                                "mean": s.result.mean, "std": s.result.std,
                                "laps_finished": s.result.laps_finished, "returns": s.result.returns,
                                "tiles_missed": s.result.tiles_missed, "margin": m}
                               for s, m in zip(self.scored, self.margins)]}

    def lines(self) -> list[str]:
        """One line per candidate, then the choice."""
        out = [f"distracer: selection on {len(self.seeds)} tracks (seeds {self.seeds[0]}..{self.seeds[-1]}):"]
        for i, (s, margin) in enumerate(zip(self.scored, self.margins)):
            mark = "*" if i == self.chosen else " "
            need = "" if s.label == "final" else f" (to replace the final: +{margin:.1f})"
            out.append(f"  {mark} {s.label:<13} {s.env_steps:>11,} steps: {s.result.summary()}{need}")
        return out


def paired_margin(final: Sequence[float], other: Sequence[float], z: float = SELECT_Z) -> float:
    """z x the standard error of mean(other - final) over shared tracks (NaN with fewer than 2 tracks)."""
    diff = np.asarray(other, dtype=float) - np.asarray(final, dtype=float)
    if diff.size < 2:
        return math.nan
    return float(z * diff.std(ddof=1) / math.sqrt(diff.size))


def choose(returns: Sequence[Sequence[float]], final: int, z: float = SELECT_Z) -> tuple[int, list[float]]:
    """Which candidate to keep: `final` unless others beat its mean on the same tracks by more than their
    `paired_margin`; then the one of those with the highest mean (the later one on a tie, listed later).
    Returns (index, margins)."""
    means = [float(np.mean(r)) for r in returns]
    margins = [0.0 if i == final else paired_margin(returns[final], r, z) for i, r in enumerate(returns)]
    winners = [i for i in range(len(returns))
               if i != final and not math.isnan(margins[i]) and means[i] - means[final] > margins[i]]
    if not winners:
        return final, margins
    return max(winners, key=lambda i: (means[i], i)), margins


def selection_seeds(eval_seed: int, episodes: int) -> list[int]:
    start = eval_seed + SELECT_SEED_OFFSET
    return list(range(start, start + episodes))


def _updates(path: Path) -> Any:
    """The learner updates a checkpoint's weights have had: within one run, the same count is the same weights
    (PPO's last rollout, collected under policy lag, is counted but never trained on)."""
    return json.loads((path / STATE_FILE).read_text()).get("counters", {}).get("num_updates")


def candidates(run_dir: Path, last: int) -> list[tuple[Path, str]]:
    """The newest `last` step checkpoints (oldest first, the final last) and, first, the periodic best, each only
    once per set of weights: a checkpoint with the same updates as a later one is that one."""
    steps = list_checkpoints(run_dir / "checkpoints")[-last:]
    if not steps:
        return []
    kept = [p for i, p in enumerate(steps[:-1]) if _updates(p) != _updates(steps[i + 1])]
    seen = {_updates(p) for p in steps}
    best = [(p, "periodic best") for p in list_checkpoints(run_dir / "best")[-1:] if _updates(p) not in seen]
    return best + [(p, "checkpoint") for p in kept] + [(steps[-1], "final")]


def select(run_dir: Path, eval_seed: int, episodes: int, last: int, workers: int,
           log: Callable[[str], None] = print) -> Selection:
    """Score the candidates of `run_dir` on `episodes` selection tracks and choose (see the module's text).

    Raises ValueError when the run has no step checkpoint to choose from."""
    found = candidates(run_dir, last)
    if not any(label == "final" for _, label in found):
        raise ValueError(f"{run_dir} has no checkpoint to select from")
    seeds = selection_seeds(eval_seed, episodes)
    scored = []
    for path, label in found:
        loaded = load_for_evaluation(path)
        result = evaluate_parallel(loaded.source, loaded.env_config, seeds, workers, log=lambda _: None, stock=False)
        scored.append(Scored(path, label, int(loaded.info.get("env_steps") or 0), result))
    final = next(i for i, s in enumerate(scored) if s.label == "final")
    chosen, margins = choose([s.result.returns for s in scored], final)
    selection = Selection(seeds, scored, chosen, margins)
    for line in selection.lines():
        log(line)
    return selection


def keep_as_best(run_dir: Path, selection: Selection) -> Path:
    """Write the chosen policy as the one checkpoint in `run_dir/best` (its learner state and counters, without
    replay, with the selection record in state.json), then remove the older one. Returns its path."""
    chosen = load_checkpoint(selection.best.path)
    best_dir = run_dir / "best"
    state = {**chosen.state, "selection": selection.to_dict()}
    kept = save_checkpoint(best_dir, chosen.learner_state, state, selection.best.env_steps)
    for other in list_checkpoints(best_dir):  # sealed before the older one goes
        if other != kept:
            shutil.rmtree(other, ignore_errors=True)
    return kept


# ----------------------------------------------------------------------------------------------------
# The command: the same selection for a run that ended without one (stopped early, or older than it)


def cmd_select(args: argparse.Namespace) -> int:
    import ray

    from distracer.config import ResourcesConfig, config_from_dict
    from distracer.evaluate import default_workers
    from distracer.ray_setup import init_ray

    run_dir = Path(args.run_dir)
    steps = list_checkpoints(run_dir / "checkpoints")
    if not steps:
        raise ConfigError(f"{str(run_dir)!r} holds no checkpoints/ to select from (a run directory is needed)")
    if args.episodes < 2 or args.last < 1:
        raise ConfigError("--episodes must be >= 2 (a paired margin needs two tracks) and --last >= 1")
    if args.json:
        refuse_inside_checkpoint(args.json, "--json")
    eval_seed = config_from_dict(load_checkpoint(steps[-1]).config).eval.seed  # verified: one line if damaged
    workers = args.workers or default_workers()
    started = init_ray(ResourcesConfig(local_num_cpus=workers)) if workers > 1 else False
    try:
        selection = select(run_dir, eval_seed, args.episodes, args.last, workers)
        kept = keep_as_best(run_dir, selection)
    finally:
        if started:
            ray.shutdown()
    print(f"distracer: recommended: {kept} (the {selection.best.label}); score it on 100 unseen episodes: "
          f"distracer evaluate --checkpoint {kept} --episodes 100")
    if args.json:
        Path(args.json).write_text(json.dumps(selection.to_dict(), indent=1))
    return 0


def add_select_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="score a run's last checkpoints on shared tracks and keep the pick as "
                                      "RUN_DIR/best (what a finished `train` does)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--episodes", type=int, default=20, help="selection tracks (the same for every candidate)")
    p.add_argument("--last", type=int, default=3, help="the newest step checkpoints considered, the final included")
    p.add_argument("--workers", type=int, default=None, help="episodes at once (default: this machine's CPUs)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the selection record as JSON")
    p.set_defaults(func=cmd_select)
