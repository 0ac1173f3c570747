"""The `tune:` section of a search config: settings dataclasses, one docstring per field, one-line errors."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from distracer.config import (
    TrainConfig,
    apply_dict,
)
from distracer.errors import ConfigError
from distracer.runtime.report import METRICS

SEARCH_FILE = "distracer_search.json"  # base config + tune settings, beside Tune's own experiment state
# What every report carries (runtime.report.RunReport) plus the trainable's own; `learner/<name>` are allowed too.
REPORTED = (*METRICS, "evaluations", "trial_restarts")
DIM_TYPES = ("loguniform", "uniform", "choice", "randint", "grid")


@dataclass
class SearchDim:
    type: str = ""
    """loguniform | uniform (floats in [lower, upper]), randint (ints in [lower, upper)), choice | grid (values)."""
    lower: float | None = None
    upper: float | None = None
    values: list | None = None
    """Candidates of `choice` (sampled) or `grid` (every one, times num_samples)."""
    also: list[str] = field(default_factory=list)
    """Other dotted keys set to the same sampled value (e.g. critic_lr tied to actor_lr)."""

    def validate(self, key: str) -> None:
        where = f"tune.search_space.{key}"
        if self.type not in DIM_TYPES:
            raise ConfigError(f"{where}.type={self.type!r} is unknown; allowed: {', '.join(DIM_TYPES)}")
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ConfigError(f"{where}: type {self.type} needs a non-empty `values` list")
            if self.lower is not None or self.upper is not None:
                raise ConfigError(f"{where}: type {self.type} takes `values`, not lower/upper")
            return
        if self.lower is None or self.upper is None:
            raise ConfigError(f"{where}: type {self.type} needs `lower` and `upper`")
        if self.values is not None:
            raise ConfigError(f"{where}: type {self.type} takes lower/upper, not `values`")
        if not self.lower < self.upper:
            raise ConfigError(f"{where}: lower={self.lower} must be < upper={self.upper}")
        if self.type == "loguniform" and self.lower <= 0:
            raise ConfigError(f"{where}: loguniform needs lower > 0, got {self.lower}")
        if self.type == "randint" and not (float(self.lower).is_integer() and float(self.upper).is_integer()):
            raise ConfigError(f"{where}: randint needs integer bounds, got {self.lower}, {self.upper}")

    def probes(self) -> list[Any]:
        """Values worth validating before anything starts: both ends, or every candidate."""
        if self.type in ("choice", "grid"):
            return list(self.values or [])
        if self.type == "randint":
            return [int(self.lower), int(self.upper) - 1]
        return [float(self.lower), float(self.upper)]

    def domain(self) -> Any:
        if self.type == "loguniform":
            return tune.loguniform(self.lower, self.upper)
        if self.type == "uniform":
            return tune.uniform(self.lower, self.upper)
        if self.type == "randint":
            return tune.randint(int(self.lower), int(self.upper))
        if self.type == "choice":
            return tune.choice(list(self.values))
        return tune.grid_search(list(self.values))


@dataclass
class SchedulerSettings:
    type: str = "none"
    """asha (AsyncHyperBand: stops the worse trials at each rung) or none (FIFO: every trial runs to the end)."""
    time_attr: str = "env_steps"
    """Progress measure of the rungs; env steps, so rungs mean the same whatever the report frequency."""
    grace_period: int = 100_000
    """No trial is stopped before this much `time_attr`."""
    max_t: int = 0
    """Longest a trial runs in `time_attr` (0: total_env_steps)."""
    reduction_factor: float = 3.0
    brackets: int = 1

    def validate(self) -> None:
        if self.type not in ("asha", "none"):
            raise ConfigError(f"tune.scheduler.type={self.type!r} is unknown; allowed: asha, none")
        if self.time_attr not in ("env_steps", "training_iteration", "wall_seconds", "num_updates"):
            raise ConfigError(f"tune.scheduler.time_attr={self.time_attr!r}; allowed: env_steps, num_updates, "
                              "wall_seconds, training_iteration")
        if self.grace_period < 1 or self.max_t < 0:
            raise ConfigError("tune.scheduler: grace_period must be >= 1 and max_t >= 0")
        if self.reduction_factor <= 1 or self.brackets < 1:
            raise ConfigError("tune.scheduler: reduction_factor must be > 1 and brackets >= 1")


@dataclass
class TargetStopper:
    value: float | None = None
    """Stop once `metric` reaches this (900 = CarRacing 'solved' level); None = off."""
    metric: str = ""
    """Defaults to tune.metric."""
    scope: str = "experiment"
    """experiment: stop every trial (the search found what it wanted); trial: stop only the one that got there."""


@dataclass
class PlateauStopper:
    std: float = 0.0
    """Stop a trial whose last `num_results` evaluations vary less than this (0 = off)."""
    num_results: int = 5
    grace_period: int = 5
    """Evaluations before the plateau check starts."""
    metric_threshold: float | None = None
    """Only stop plateaus at or beyond this score (max mode: above it): a good plateau, not an early one."""


@dataclass
class StopperSettings:
    target: TargetStopper = field(default_factory=TargetStopper)
    plateau: PlateauStopper = field(default_factory=PlateauStopper)
    time_budget_s: float = 0.0
    """Stop the whole experiment after this many seconds (0 = no limit); resumable with --resume."""


@dataclass
class TuneSettings:
    name: str = "tune"
    """Experiment name: Tune's state and the trials live in <storage_path>/<name>."""
    storage_path: str = ""
    """Where experiments go; empty: the config's run_dir. Multi-node: a shared path or s3://, gs:// URI."""
    num_samples: int = 1
    seeds: list[int] = field(default_factory=list)
    """Grid of training seeds (every sample runs with each); empty: the config's seed only."""
    search_space: dict = field(default_factory=dict)
    """Dotted config key -> {type, lower, upper | values, also}."""
    metric: str = "eval_return_mean"
    mode: str = "max"
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    stoppers: StopperSettings = field(default_factory=StopperSettings)
    num_to_keep: int = 2
    """Tune checkpoints kept per trial, the best by `metric` (the newest is always kept too, for restarts)."""
    max_failures: int = 1
    """Restarts of a failed trial (from its last checkpoint) before it is marked errored; -1: forever."""
    max_concurrent_trials: int = 0
    """0: as many trials at once as the cluster fits."""
    wait_for_resources: bool = False
    """Allow trials bigger than the cluster is now (an autoscaling cluster will grow); else refused up front."""

    @classmethod
    def parse(cls, data: Any, config: TrainConfig) -> TuneSettings:
        """Strictly parse a `tune:` mapping; every error is one line naming the key."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"tune must be a mapping, got {data!r}")
        data = dict(data)
        if data.get("scheduler") is None or isinstance(data.get("scheduler"), str):  # `scheduler: asha` shorthand
            data["scheduler"] = {"type": data.get("scheduler") or "none"}
        settings = apply_dict(cls(), copy.deepcopy(data), "tune.")
        dims: dict[str, SearchDim] = {}
        for key, spec in settings.search_space.items():
            if not isinstance(spec, dict):
                raise ConfigError(f"tune.search_space.{key}={spec!r} must be a mapping like "
                                  "{type: loguniform, lower: 1e-5, upper: 1e-3}")
            dim = apply_dict(SearchDim(), spec, f"tune.search_space.{key}.")
            dim.validate(key)
            dims[str(key)] = dim
        settings.search_space = dims  # parsed: dotted key -> SearchDim
        settings.validate(config)
        return settings

    def validate(self, config: TrainConfig) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"tune.num_samples={self.num_samples} must be >= 1")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"tune.mode={self.mode!r}; allowed: max, min")
        metrics = (("tune.metric", self.metric), ("tune.stoppers.target.metric", self.stoppers.target.metric))
        for where, metric in metrics:
            if metric and metric not in REPORTED and not metric.startswith("learner/"):
                raise ConfigError(f"{where}={metric!r} is not reported; allowed: {', '.join(REPORTED)}, learner/<name>")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"tune.name={self.name!r} must be a plain directory name")
        if self.seeds and ("seed" in self.search_space or any("seed" in d.also for d in self.search_space.values())):
            raise ConfigError("tune.seeds and a search_space entry both set `seed`; keep one")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"tune.seeds={self.seeds} has duplicates")
        if self.stoppers.target.scope not in ("experiment", "trial"):
            raise ConfigError(f"tune.stoppers.target.scope={self.stoppers.target.scope!r}; allowed: experiment, trial")
        plateau = self.stoppers.plateau
        if plateau.std < 0 or plateau.num_results < 2 or plateau.grace_period < 0:
            raise ConfigError("tune.stoppers.plateau: std must be >= 0, num_results >= 2, grace_period >= 0")
        if self.stoppers.time_budget_s < 0:
            raise ConfigError(f"tune.stoppers.time_budget_s={self.stoppers.time_budget_s} must be >= 0")
        if self.num_to_keep < 1 or self.max_failures < -1 or self.max_concurrent_trials < 0:
            raise ConfigError("tune: num_to_keep must be >= 1, max_failures >= -1, max_concurrent_trials >= 0")
        self.scheduler.validate()
        if self.scheduler.max_t == 0:
            self.scheduler.max_t = config.total_env_steps if self.scheduler.time_attr == "env_steps" else 0
            if self.scheduler.type == "asha" and self.scheduler.max_t == 0:
                raise ConfigError(f"tune.scheduler.max_t must be set for time_attr={self.scheduler.time_attr}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_trials(self) -> int:
        grid = math.prod(len(d.values or []) for d in self.search_space.values() if d.type == "grid")
        return self.num_samples * max(1, len(self.seeds)) * grid
