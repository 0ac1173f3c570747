"""What a run counts (`Counters`, kept in every checkpoint) and what it reports (`RunReport`, to Tune, to
`distracer train`'s last line and to `summary.json`): one dataclass each, so the keys are written once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal


@dataclass
class Counters:
    """Everything a resumed run must continue from (besides the learner's own state)."""

    env_steps: int = 0
    """Agent steps collected over all workers (each covers `env.action_repeat` frames)."""
    num_updates: int = 0
    """Learner updates: gradient steps off-policy, one per rollout round on-policy (PPO)."""
    episodes: int = 0
    """Training episodes finished."""
    weights_version: int = 0
    """Policy weights published to the workers so far."""
    wall_seconds: float = 0.0
    """Training wall-clock since setup finished (a resume continues it)."""
    next_eval: int = 0
    """env_steps at which the next periodic evaluation starts."""
    next_checkpoint: int = 0
    """env_steps at which the next step-based checkpoint is written."""
    best_eval: float = -math.inf
    """Best evaluation mean so far (its weights are in run_dir/best)."""
    last_eval: float = float("nan")
    last_eval_std: float = float("nan")
    resumes: int = 0
    """Times this run was resumed or rebuilt from a checkpoint."""
    worker_restarts: int = 0
    """Rollout-worker deaths Ray restarted (one per death, however many calls it failed)."""
    recoveries: int = 0
    """Times the run was rebuilt after its learner or a replay shard died."""
    recent_returns: list[float] = field(default_factory=list)
    """The last 20 training episode returns."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counters:
        """From a checkpoint's `counters` (keys it does not know are skipped: older or newer checkpoints)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


ReportKind = Literal["evaluation", "checkpoint", "final"]


@dataclass
class RunReport:
    """One report of a run: after each evaluation, each checkpoint, and at its end."""

    kind: ReportKind
    """What happened: an evaluation finished, a checkpoint was written (`checkpoint` is it), the run ended."""
    env_steps: int
    num_updates: int
    episodes: int
    weights_version: int
    worker_restarts: int
    recoveries: int
    eval_return_mean: float
    """Mean stock return of the newest evaluation (NaN before the first)."""
    eval_return_std: float
    best_eval_return: float
    episode_return_mean: float
    """Mean of the last 20 training episode returns (NaN before the first)."""
    env_steps_per_s: float
    """Over the whole run: a resume keeps both its steps and its time."""
    wall_seconds: float
    replay_ratio: float
    """Updates per env step after learning_starts (off-policy); updates per step on-policy."""
    learner: dict[str, float] = field(default_factory=dict)
    """The learner's newest metrics (reported as `learner/<name>`)."""
    checkpoint: str | None = None
    """The newest checkpoint of this run (for kind 'checkpoint', the one just written)."""
    best_checkpoint: str | None = None
    """The checkpoint of the best evaluation so far (run_dir/best)."""

    def metrics(self) -> dict[str, float]:
        """The numbers: every scalar field and `learner/<name>`."""
        out = {name: getattr(self, name) for name in METRICS}
        out.update({f"learner/{k}": v for k, v in self.learner.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The summary format (`summary.json`, what `train()` returns): metrics and the checkpoints that exist."""
        out: dict[str, Any] = self.metrics()
        out.update({k: v for k, v in (("checkpoint", self.checkpoint), ("best_checkpoint", self.best_checkpoint))
                    if v is not None})
        return out


METRICS = tuple(f.name for f in fields(RunReport) if f.type in ("int", "float"))
"""The scalar metrics every report carries, in order (Tune's `tune.metric` may name any of them)."""
