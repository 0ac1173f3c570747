"""What a run tells its user: TensorBoard scalars, a metrics.jsonl, and one live progress line."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from distracer.config import TrainConfig
from distracer.envs.stepping import EPISODE_ENDS

RATE_WINDOW_S = 60.0


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class BusyMeter:
    """How much of the wall-clock the learner spent updating and the rollout workers collecting: the rest of
    each is time waiting (for rollouts, for the update, for replay batches). Fractions in [0, 1] per part
    (workers averaged over `num_workers`), over windows of at least `window_s` seconds. A call is counted in the
    window it returns in, so one that straddles two windows can push a window past 1: capped at 1."""

    def __init__(self, num_workers: int, window_s: float = RATE_WINDOW_S):
        self.num_workers = num_workers
        self.window_s = window_s
        self.window_start = time.time()
        self.learner_s = 0.0  # in this window
        self.workers_s = 0.0
        self.learner_total = 0.0  # the learner actor's own running total, last seen (a new actor starts at 0)

    def add_collect(self, seconds: float) -> None:
        """A worker's collect call took `seconds` (CollectStats.seconds)."""
        self.workers_s += seconds

    def learner_total_now(self, total: float) -> None:
        """The learner actor's running total of update seconds; a restarted actor counts again from 0."""
        self.learner_s += total - self.learner_total if total >= self.learner_total else total
        self.learner_total = total

    def fractions(self, now: float, force: bool = False) -> dict[str, float] | None:
        """{'learner_busy', 'workers_busy'} once `window_s` has passed (or `force`, at the end); else None."""
        elapsed = now - self.window_start
        if elapsed <= 0 or (elapsed < self.window_s and not force):
            return None
        out = {"learner_busy": min(1.0, self.learner_s / elapsed),
               "workers_busy": min(1.0, self.workers_s / (elapsed * self.num_workers))}
        self.window_start, self.learner_s, self.workers_s = now, 0.0, 0.0
        return out


class RunLogger:
    """Writes `tb/` (TensorBoard), `metrics.jsonl` (evaluations, for `distracer plot`) and the console line."""

    def __init__(self, run_dir: Path, config: TrainConfig, progress_every_s: float = 5.0, start_steps: int = 0,
                 start_updates: int = 0, bar: bool | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.metrics_file = (run_dir / "metrics.jsonl").open("a")
        self.progress_every_s = progress_every_s
        self.start = time.time()
        self.last_progress = 0.0
        # (time, env steps, updates) samples over the last RATE_WINDOW_S: rates are averaged over it, so a
        # PPO rollout or a slow learner that moves the counters in bursts never reads as "0 steps/s".
        self.samples: deque[tuple[float, int, int]] = deque([(self.start, start_steps, start_updates)])
        # On a terminal one tqdm bar updates in place; elsewhere (files, `ray job logs`, Tune) plain lines.
        self.bar = None
        if sys.stdout.isatty() if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=config.total_env_steps, initial=start_steps, desc=f"[{config.algo}]", unit=" step",
                            unit_scale=True, smoothing=0.05, dynamic_ncols=True, file=sys.stdout)

    def info(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)  # above the bar, which stays at the bottom
        else:
            print(message, flush=True)

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def episode(self, episode_return: float, length: int, end: str, step: int) -> None:
        """A finished training episode: its stock return, length (frames) and why it ended, as one 0/1 scalar
        per reason (train/ended_<reason>, `EPISODE_ENDS`), whose mean over a span is that reason's share."""
        self.writer.add_scalar("train/episode_return", episode_return, step)
        self.writer.add_scalar("train/episode_length", length, step)
        for reason in EPISODE_ENDS:
            self.writer.add_scalar(f"train/ended_{reason}", float(reason == end), step)

    def evaluation(self, result: Any, step: int) -> None:
        self.writer.add_scalar("eval/return_mean", result.mean, step)
        self.writer.add_scalar("eval/return_std", result.std, step)
        # Laps finished (every tile visited) and tiles missed: what stands between a driving car and 900.
        self.writer.add_scalar("eval/laps_finished", result.laps_finished / max(1, len(result.returns)), step)
        self.writer.add_scalar("eval/tiles_missed_median", result.median_tiles_missed, step)
        record = {"env_steps": step, "wall_seconds": time.time() - self.start, "eval_return_mean": result.mean,
                  "eval_return_std": result.std, "returns": result.returns, "seeds": result.seeds,
                  "laps_finished": result.laps_finished, "tiles_missed": result.tiles_missed}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.info(f"distracer: eval at {step:,} env steps: {result.summary()}")

    def progress(self, counters: Any, learner_metrics: dict[str, float], replay_fill: float | None,
                 time_left_s: float = math.inf) -> None:
        """One progress line (or the tqdm bar) every `progress_every_s`. `time_left_s`: seconds of `max_minutes`
        left (inf without a time budget); the ETA is whichever of it and the steps left at the current rate ends
        first, so a run with a wall-clock budget is not promised hours it will never get."""
        now = time.time()
        if now - self.last_progress < self.progress_every_s:
            return
        steps_s, updates_s = self._rates(now, counters.env_steps, counters.num_updates)
        step = counters.env_steps
        self.writer.add_scalar("system/env_steps_per_s", steps_s, step)
        self.writer.add_scalar("system/updates_per_s", updates_s, step)
        if replay_fill is not None:
            self.writer.add_scalar("system/replay_fill", replay_fill, step)
        for name, value in learner_metrics.items():
            self.writer.add_scalar(f"learner/{name}", value, step)
        remaining = (self.config.total_env_steps - step) / steps_s if steps_s > 0 else math.inf
        # tqdm's own estimate counts toward total_env_steps only: say when the time budget ends the run first.
        by_time = time_left_s < remaining
        eta = f"{_fmt_duration(min(remaining, time_left_s))}{' (max_minutes)' if by_time else ''}"
        fill = f" | replay {100 * replay_fill:.0f}%" if replay_fill is not None else ""
        last_eval = f"{counters.last_eval:.1f}" if math.isfinite(counters.last_eval) else "-"
        digits = 1 if updates_s >= 1 else 3  # PPO makes one update per rollout: 0.0 would hide it
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            ends = f" | ends in {eta}" if by_time else ""
            self.bar.set_postfix_str(f"{updates_s:.{digits}f} upd/s{fill} | eval {last_eval}{ends}", refresh=True)
            self.last_progress = now
            return
        line = (f"[{self.config.algo}] {step:,}/{self.config.total_env_steps:,} steps | {steps_s:.0f} steps/s | "
                f"{updates_s:.{digits}f} upd/s{fill} | eval {last_eval} | ETA {eta}")
        print(line, file=sys.stdout, flush=True)
        self.last_progress = now

    def busy(self, meter: BusyMeter, step: int, force: bool = False) -> None:
        """`system/learner_busy` and `system/workers_busy` (see BusyMeter) once a window is full."""
        fractions = meter.fractions(time.time(), force)
        for name, value in (fractions or {}).items():
            self.writer.add_scalar(f"system/{name}", value, step)

    def restart_rates(self, steps: int, updates: int) -> None:
        """Count rates afresh from here: after a recovery the counters step back to a checkpoint's."""
        self.samples = deque([(time.time(), steps, updates)])
        if self.bar is not None:
            self.bar.reset(total=self.config.total_env_steps)
            self.bar.update(steps)

    def _rates(self, now: float, steps: int, updates: int) -> tuple[float, float]:
        """Env steps/s and updates/s over the last RATE_WINDOW_S (since the start until it is full)."""
        self.samples.append((now, steps, updates))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        t0, steps0, updates0 = self.samples[0]
        dt = max(1e-9, now - t0)
        return (steps - steps0) / dt, (updates - updates0) / dt

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()
        self.metrics_file.close()
