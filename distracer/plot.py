"""`distracer plot`: learning curves from runs' `metrics.jsonl` (one JSON record per periodic evaluation).

Two panels: evaluation score against env steps and against wall-clock time. Runs are grouped by
algorithm (from each run's config.json); a group of several runs (seeds) is drawn as the mean over runs
with a ± one-std band across runs, after interpolating each run onto a common x grid that stops where the
shortest run stops (no extrapolation). A single run is drawn with the std of its own evaluation episodes.
The 900 line is CarRacing-v3's "solved" threshold.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distracer.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
SOLVED_SCORE = 900.0
GRID_POINTS = 200


@dataclass
class RunCurve:
    """One run's evaluations, sorted by env steps."""

    name: str
    group: str
    env_steps: np.ndarray
    wall_seconds: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def find_metrics(path: str | Path, max_depth: int = 4) -> list[Path]:
    """metrics.jsonl files for an argument: the file itself, a run dir, or a dir of runs (e.g. Tune's)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"run {str(path)!r} does not exist")
    if (path / METRICS_FILE).is_file():
        return [path / METRICS_FILE]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        depth = len(Path(dirpath).relative_to(path).parts)
        if METRICS_FILE in filenames:
            found.append(Path(dirpath) / METRICS_FILE)
        dirnames[:] = [d for d in dirnames if depth < max_depth and d not in ("checkpoints", "tb", "replay")]
    if not found:
        raise ConfigError(f"{str(path)!r} holds no {METRICS_FILE} (written by `distracer train` at each evaluation)")
    return sorted(found)


def load_run(metrics: Path) -> RunCurve:
    """Read one metrics.jsonl; a torn last line (a run killed mid-write) is skipped, not fatal."""
    records = []
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            records.append((float(record["env_steps"]), float(record["wall_seconds"]),
                            float(record["eval_return_mean"]), float(record.get("eval_return_std", 0.0))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    records = [r for r in records if np.isfinite(r[2])]
    if not records:
        raise ConfigError(f"{str(metrics)!r} holds no evaluation records")
    data = np.array(sorted(records))
    run_dir = metrics.parent
    return RunCurve(run_dir.name, _group_of(run_dir), data[:, 0], data[:, 1], data[:, 2], np.nan_to_num(data[:, 3]))


def _group_of(run_dir: Path) -> str:
    """The algorithm from the run's config.json, so seeds of one algorithm are averaged together."""
    try:
        return str(json.loads((run_dir / "config.json").read_text()).get("algo", "runs"))
    except (OSError, json.JSONDecodeError, AttributeError):
        return "runs"


def mean_and_spread(runs: list[RunCurve], x_of: str, points: int = GRID_POINTS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid, mean, std) across runs on a common grid over the x range that every run covers."""
    xs = [getattr(r, x_of) for r in runs]
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    if hi <= lo:  # one evaluation each, or runs that do not overlap: nothing to interpolate over
        grid = np.array([hi])
    else:
        grid = np.linspace(lo, hi, points)
    ys = np.stack([np.interp(grid, x, r.mean) for x, r in zip(xs, runs)])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def plot_runs(paths: list[str | Path], out: str | Path) -> Path:
    """Write the two-panel PNG for the runs under `paths`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    out = Path(out)
    if not out.parent.resolve().is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    from distracer.checkpoint import refuse_inside_checkpoint  # here: the module pulls in torch

    refuse_inside_checkpoint(out, "--out")
    runs = [load_run(m) for p in paths for m in find_metrics(p)]
    groups: dict[str, list[RunCurve]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    wall_scale, wall_unit = _wall_unit(max(r.wall_seconds[-1] for r in runs))

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for color, (group, members) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10, groups.items()):
        for ax, x_of, scale in ((axes[0], "env_steps", 1.0), (axes[1], "wall_seconds", wall_scale)):
            _draw_group(ax, group, members, x_of, scale, color)
    for ax in axes:
        ax.axhline(SOLVED_SCORE, color="black", linestyle="--", linewidth=1, label=f"solved ({SOLVED_SCORE:.0f})")
        ax.grid(alpha=0.3)
    from matplotlib.ticker import EngFormatter

    axes[0].xaxis.set_major_formatter(EngFormatter())  # 200k, 1M rather than an offset "1e6"
    axes[0].set_xlabel("env steps")
    axes[0].set_ylabel("evaluation return (stock CarRacing-v3)")
    axes[1].set_xlabel(f"wall-clock ({wall_unit})")
    axes[0].legend(loc="lower right", fontsize=8)
    n_runs = len(runs)
    fig.suptitle(f"distracer learning curves ({n_runs} run{'s' if n_runs > 1 else ''})")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r} cannot be written ({exc.strerror or type(exc).__name__})") from None
    finally:
        plt.close(fig)
    return out


def _draw_group(ax, group: str, members: list[RunCurve], x_of: str, scale: float, color: str) -> None:
    if len(members) == 1:
        run = members[0]
        x = getattr(run, x_of) / scale
        ax.plot(x, run.mean, color=color, marker="o", markersize=3, label=f"{group}: {run.name}")
        ax.fill_between(x, run.mean - run.std, run.mean + run.std, color=color, alpha=0.2)
        return
    for run in members:  # each seed faintly, so outliers stay visible behind the mean
        ax.plot(getattr(run, x_of) / scale, run.mean, color=color, alpha=0.25, linewidth=0.8)
    grid, mean, std = mean_and_spread(members, x_of)
    ax.plot(grid / scale, mean, color=color, linewidth=2, label=f"{group}: mean of {len(members)} runs ± std")
    ax.fill_between(grid / scale, mean - std, mean + std, color=color, alpha=0.2)


def _wall_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 3600:
        return 3600.0, "hours"
    if seconds >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def cmd_plot(args: argparse.Namespace) -> int:
    out = plot_runs(args.runs, args.out)
    print(f"distracer: learning curves written to {out}")
    return 0


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="PNG learning curves (score vs env steps and vs wall-clock) from run dirs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run dirs (or their metrics.jsonl, or a dir of runs such as a Tune experiment)")
    p.add_argument("--out", default="learning_curves.png", metavar="FILE.png", help="PNG to write")
    p.set_defaults(func=cmd_plot)
