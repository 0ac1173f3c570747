"""`distracer tune`: seeds, hyperparameter searches, early stopping and fault tolerance on Ray Tune.

A search is a training config (tune_configs/*.yaml) plus a `tune:` section::

    tune:
      num_samples: 4                  # draws from search_space, each run once per seed
      seeds: [1, 2, 3]                # a grid: every sample runs with every seed
      search_space:
        sac_drq.actor_lr: {type: loguniform, lower: 3.0e-5, upper: 1.0e-3, also: [sac_drq.critic_lr]}
      metric: eval_return_mean        # what "best" means (ASHA, checkpoints kept, best trial)
      mode: max
      scheduler: {type: asha, grace_period: 100000, max_t: 1000000, reduction_factor: 3}
      stoppers:
        target: {value: 900, scope: experiment}          # stop everything once a trial scores 900
        plateau: {std: 5.0, num_results: 6, grace_period: 4}
        time_budget_s: 43200
      num_to_keep: 2                  # Tune checkpoints kept per trial, best by `metric`
      max_failures: 2                 # a failed trial restarts from its last checkpoint

Each trial is one `distracer.runtime.driver.Driver` run inside a Tune function trainable. The trial's
placement group holds one bundle per process the driver starts (`runtime.actors.bundle_layout`) and the driver
pins each actor to its bundle, so a trial starts only when all of it fits and then never waits.
Everything Tune-facing is imported from `ray.tune` (`ray.train.report` inside Tune fails the trial).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.stopper import CombinedStopper, TimeoutStopper, TrialPlateauStopper

from distracer.checkpoint import read_counters
from distracer.config import (
    TrainConfig,
    apply_dict,
    config_from_dict,
    deep_merge,
    nest_dotted,
    parse_override,
    read_yaml,
)
from distracer.errors import ConfigError
from distracer.runtime.report import METRICS, RunReport

SEARCH_FILE = "distracer_search.json"  # base config + tune settings, beside Tune's own experiment state
# What every report carries (runtime.report.RunReport) plus the trainable's own; `learner/<name>` are allowed too.
REPORTED = (*METRICS, "evaluations", "trial_restarts")
DIM_TYPES = ("loguniform", "uniform", "choice", "randint", "grid")


# ---------------------------------------------------------------------------------------------
# The `tune:` section


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


# ---------------------------------------------------------------------------------------------
# Loading and validating a search


@dataclass
class Search:
    """A validated search: the raw base config (what YAML + --set gave) and its tune settings."""

    base: dict[str, Any]
    config: TrainConfig
    settings: TuneSettings

    @property
    def storage_path(self) -> str:
        path = self.settings.storage_path or self.config.run_dir
        return path if "://" in path else os.path.abspath(path)

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.settings.name}"


def trial_values(settings: TuneSettings, sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values (Tune's config: flat dotted keys), with each dim's `also` keys filled in."""
    out = dict(sampled)
    for key, dim in settings.search_space.items():
        if key in sampled:
            out.update({other: sampled[key] for other in dim.also})
    return out


def trial_config(search: Search, sampled: dict[str, Any], run_dir: str | None = None) -> TrainConfig:
    """The validated TrainConfig of one trial: base config + sampled values (+ the trial's own run_dir)."""
    data = deep_merge(copy.deepcopy(search.base), nest_dotted(trial_values(search.settings, sampled)))
    if run_dir is not None:
        # The trial's driver keeps one checkpoint of its own: Tune keeps the ones that matter.
        data = deep_merge(data, {"run_dir": run_dir, "checkpoint": {"keep": 1}})
    return config_from_dict(data)


def load_search(paths: list[str] | str | None, overrides: list[str] | None = None) -> Search:
    """YAML files + `--set` overrides -> a validated Search; `--set tune.x.y=v` merges into the tune section."""
    if isinstance(paths, str):
        paths = [paths]
    raw: dict[str, Any] = {}
    for path in paths or []:
        raw = deep_merge(raw, read_yaml(path))
    tune_raw = raw.pop("tune", None) or {}
    if not isinstance(tune_raw, dict):
        raise ConfigError(f"tune must be a mapping, got {tune_raw!r}")
    for item in overrides or []:
        if item.startswith("tune.search_space."):
            tune_raw = _override_search_space(tune_raw, item)
            continue
        parsed = parse_override(item)
        if "tune" in parsed:
            if not isinstance(parsed["tune"], dict):
                raise ConfigError(f"override {item!r}: set a key of tune, e.g. tune.num_samples=4")
            tune_raw = deep_merge(tune_raw, parsed["tune"])
        else:
            raw = deep_merge(raw, parsed)
    config = config_from_dict(copy.deepcopy(raw))
    settings = TuneSettings.parse(tune_raw, config)
    search = Search(raw, config, settings)
    check_samples(search)
    return search


def _override_search_space(tune_raw: dict[str, Any], item: str) -> dict[str, Any]:
    """`--set tune.search_space.<dotted key>={type: ...}` adds or replaces a dim, and
    `--set tune.search_space.<dotted key>.<field>=value` changes one field of an existing dim, `=null` drops one
    (search-space keys contain dots themselves, so the generic nesting of --set does not apply)."""
    path, _, _ = item.partition("=")
    rest = path[len("tune.search_space."):]
    value = parse_override(f"v={item.partition('=')[2]}")["v"]
    space = dict(tune_raw.get("search_space") or {})
    key, _, last = rest.rpartition(".")
    if rest not in space and key in space and last in {f.name for f in dataclasses.fields(SearchDim)}:
        space[key] = {**space[key], last: value}
    elif isinstance(value, dict):
        space[rest] = value
    elif value is None:  # `tune.search_space.<key>=null` drops a dim
        space.pop(rest, None)
    else:
        raise ConfigError(f"override {item!r}: give a dim like tune.search_space.{rest}="
                          "'{type: loguniform, lower: 1.0e-5, upper: 1.0e-3}' or set a field of an existing dim")
    return {**tune_raw, "search_space": space}


def check_samples(search: Search, random_draws: int = 3) -> None:
    """Validate trial configs before anything starts: each seed, both ends / every value of each dim
    (others at the base), and a few random joint draws. An error names the key and value."""
    settings = search.settings
    probes: list[dict[str, Any]] = [{"seed": s} for s in settings.seeds]
    for key, dim in settings.search_space.items():
        probes += [{key: v} for v in dim.probes()]
    rng = random.Random(0)
    for _ in range(random_draws if settings.search_space else 0):
        probes.append({key: _draw(dim, rng) for key, dim in settings.search_space.items()})
    for sampled in probes:
        try:
            trial_config(search, sampled)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in sampled.items())
            raise ConfigError(f"tune.search_space gives a bad trial ({shown}): {exc}") from None


def _draw(dim: SearchDim, rng: random.Random) -> Any:
    if dim.type in ("choice", "grid"):
        return rng.choice(list(dim.values or []))
    if dim.type == "randint":
        return rng.randrange(int(dim.lower), int(dim.upper))
    if dim.type == "loguniform":
        return math.exp(rng.uniform(math.log(dim.lower), math.log(dim.upper)))
    return rng.uniform(dim.lower, dim.upper)


# ---------------------------------------------------------------------------------------------
# The trainable


def run_trial(sampled: dict[str, Any], search: Search) -> None:
    """Tune function trainable: one Driver run, reporting after each evaluation and checkpoint.

    A restarted trial (FailureConfig, or `--resume` of an interrupted experiment) continues from the
    newest checkpoint Tune holds for it: a distracer checkpoint directory, copied by Tune.
    """
    from distracer.runtime.driver import Driver

    config = trial_config(search, sampled, run_dir=_trial_run_dir(search))
    # The driver's own checkpoints are scratch (Tune keeps copies). Clear those of an earlier attempt of
    # this trial: they may be newer than the Tune checkpoint it resumes from, and pruning (keep=1, by step)
    # would then delete each new checkpoint before Tune could copy it.
    shutil.rmtree(Path(config.run_dir) / "checkpoints", ignore_errors=True)
    evaluations = 0
    restarts = 0  # times this trial was started again from a checkpoint (counted in the checkpoint itself)
    last_was_evaluation = False

    def metrics(report: RunReport, new_evaluation: bool) -> dict[str, Any]:
        return {**report.metrics(), "evaluations": evaluations, "trial_restarts": restarts,
                "new_evaluation": new_evaluation}

    def reporter(report: RunReport) -> None:
        nonlocal evaluations, last_was_evaluation
        last_was_evaluation = report.kind == "evaluation"
        evaluations += last_was_evaluation
        if report.kind == "checkpoint":
            tune.report(metrics(report, False), checkpoint=tune.Checkpoint.from_directory(report.checkpoint))
        else:
            tune.report(metrics(report, last_was_evaluation))

    def run(resume: str | None) -> None:
        driver = Driver(config, resume=resume, reporter=reporter, handle_signals=False, in_trial=True)
        driver.run()
        final = driver.final_report
        if last_was_evaluation and final is not None and final.checkpoint:
            # The driver's final checkpoint was written (and reported, unscored) just before the final
            # evaluation of the same weights: report it again with that score, so checkpoints are ranked right.
            tune.report(metrics(final, False), checkpoint=tune.Checkpoint.from_directory(final.checkpoint))

    restored = tune.get_checkpoint()
    if restored is None:
        run(None)
        return
    with restored.as_directory() as ckpt_dir:  # kept open for the whole run: a saved replay is read at setup
        restarts = read_counters(ckpt_dir).get("resumes", 0) + 1
        run(ckpt_dir)


def _trial_run_dir(search: Search) -> str:
    """The driver's run_dir inside the trial: in the experiment directory itself when storage is a local (or
    shared) path, so metrics and TensorBoard files are live there and never copied; Tune's local trial dir
    (on the node running the trial) when storage is a URI."""
    local = tune.get_context().get_trial_dir()
    if "://" in search.storage_path:
        return os.path.join(local, "run")
    return os.path.join(search.experiment_dir, os.path.basename(local.rstrip("/")), "run")


def trial_resources(search: Search, sampled: dict[str, Any]) -> Any:
    """One placement group per trial: the driver, the learner, each worker, each shard (actors.bundle_layout)."""
    from distracer.runtime.actors import bundle_layout

    config = trial_config(search, sampled)
    return tune.PlacementGroupFactory(bundle_layout(config, config.resources.learner_gpus), strategy="PACK")


def make_trainable(search: Search) -> Any:
    def resources(sampled: dict[str, Any]) -> Any:
        return trial_resources(search, sampled)

    return tune.with_resources(tune.with_parameters(run_trial, search=search), resources)


# ---------------------------------------------------------------------------------------------
# Stoppers and scheduler: Tune's own, configured


class NewEvaluationsOnly(tune.Stopper):
    """Feed a Tune stopper only the reports that carry a new evaluation: a checkpoint report repeats the
    last evaluation's score, and a plateau check would see each score twice."""

    def __init__(self, stopper: tune.Stopper):
        self.stopper = stopper

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get("new_evaluation")) and self.stopper(trial_id, result)

    def stop_all(self) -> bool:
        return self.stopper.stop_all()


class TargetScoreStopper(tune.Stopper):
    """Stop the trial that reaches `value` on `metric`; with scope=experiment, stop every trial then.
    (Tune's dict stopper {metric: value} only stops the trial, and only for metrics that grow.)"""

    def __init__(self, metric: str, value: float, mode: str = "max", scope: str = "experiment"):
        self.metric, self.value, self.mode, self.scope = metric, value, mode, scope
        self.reached = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        score = result.get(self.metric)
        if not isinstance(score, int | float) or not math.isfinite(score):
            return False  # no evaluation yet (NaN)
        hit = score >= self.value if self.mode == "max" else score <= self.value
        self.reached = self.reached or hit
        return hit

    def stop_all(self) -> bool:
        return self.scope == "experiment" and self.reached


def build_stopper(settings: TuneSettings) -> tune.Stopper | None:
    stoppers: list[tune.Stopper] = []
    target = settings.stoppers.target
    if target.value is not None:
        stoppers.append(TargetScoreStopper(target.metric or settings.metric, target.value, settings.mode, target.scope))
    plateau = settings.stoppers.plateau
    if plateau.std > 0:
        stoppers.append(NewEvaluationsOnly(TrialPlateauStopper(
            settings.metric, std=plateau.std, num_results=plateau.num_results, grace_period=plateau.grace_period,
            metric_threshold=plateau.metric_threshold, mode=settings.mode)))
    if settings.stoppers.time_budget_s > 0:
        stoppers.append(TimeoutStopper(settings.stoppers.time_budget_s))
    if not stoppers:
        return None
    return stoppers[0] if len(stoppers) == 1 else CombinedStopper(*stoppers)


def build_scheduler(settings: TuneSettings) -> Any:
    if settings.scheduler.type == "none":
        return None
    s = settings.scheduler
    # stop_last_trials=False: a trial that survives every rung ends by itself at total_env_steps, after its
    # final evaluation and checkpoint; ASHA's default would kill it at max_t, before either.
    return ASHAScheduler(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, brackets=s.brackets, stop_last_trials=False)


def param_space(settings: TuneSettings) -> dict[str, Any]:
    space = {key: dim.domain() for key, dim in settings.search_space.items()}
    if settings.seeds:
        space["seed"] = tune.grid_search(list(settings.seeds))
    return space


def run_config(search: Search) -> Any:
    s = search.settings
    return tune.RunConfig(
        name=s.name, storage_path=search.storage_path, stop=build_stopper(s), verbose=1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=s.num_to_keep, checkpoint_score_attribute=s.metric,
                                                checkpoint_score_order=s.mode),
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
    )


def build_tuner(search: Search) -> Any:
    s = search.settings
    concurrent = s.max_concurrent_trials or None
    return tune.Tuner(
        make_trainable(search),
        param_space=param_space(s),
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, num_samples=s.num_samples,
                                    scheduler=build_scheduler(s), max_concurrent_trials=concurrent),
        run_config=run_config(search),
    )


# ---------------------------------------------------------------------------------------------
# Running, resuming, reporting


def check_fits_cluster(search: Search) -> None:
    """Refuse a trial that the cluster cannot hold now: Tune would wait for it forever."""
    import ray

    if search.settings.wait_for_resources:
        return
    from distracer.runtime.actors import bundle_layout

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    config = search.config
    bundles = bundle_layout(config, config.resources.learner_gpus)
    need: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            need[name] = need.get(name, 0.0) + amount
        if not any(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes):
            raise ConfigError(f"a trial needs a bundle {bundle} that no node of the Ray cluster has "
                              "(set tune.wait_for_resources=true on an autoscaling cluster)")
    short = {k: f"{v:g} > {total.get(k, 0.0):g}" for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        raise ConfigError(f"a trial needs more than the Ray cluster has ({short}; bundles {bundles}); lower "
                          "resources.* or set tune.wait_for_resources=true on an autoscaling cluster")


def resolve_gpus(search: Search) -> None:
    """Fix learner_gpus=-1 (auto) against the running cluster, so the placement group and the driver agree."""
    from distracer.runtime.ray_setup import learner_gpus

    gpus = learner_gpus(search.config.resources)
    search.base = deep_merge(search.base, {"resources": {"learner_gpus": gpus}})
    search.config = config_from_dict(copy.deepcopy(search.base))


def save_search(search: Search) -> None:
    Path(search.experiment_dir).mkdir(parents=True, exist_ok=True)
    data = {"base": search.base, "tune": search.settings.to_dict()}
    (Path(search.experiment_dir) / SEARCH_FILE).write_text(json.dumps(data, indent=1, default=str))


def load_saved_search(experiment_dir: str | Path) -> Search:
    path = Path(experiment_dir) / SEARCH_FILE
    if not path.is_file():
        raise ConfigError(f"{str(experiment_dir)!r} is not a distracer tune experiment (no {SEARCH_FILE})")
    data = json.loads(path.read_text())
    config = config_from_dict(copy.deepcopy(data["base"]))
    tune_raw = {k: v for k, v in data["tune"].items()}
    settings = TuneSettings.parse(tune_raw, config)
    search = Search(data["base"], config, settings)
    # The experiment may have been moved: storage follows the directory given.
    experiment_dir = os.path.abspath(experiment_dir)
    search.settings.storage_path, search.settings.name = os.path.split(experiment_dir)
    return search


def run_search(search: Search, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a search on the Ray this process is connected to; returns the best trial's summary."""
    check_fits_cluster(search)
    if resume:
        if not tune.Tuner.can_restore(search.experiment_dir):
            raise ConfigError(f"{search.experiment_dir!r} holds no Tune experiment state to resume")
        tuner = tune.Tuner.restore(search.experiment_dir, trainable=make_trainable(search), resume_errored=True)
    else:
        if Path(search.experiment_dir, "tuner.pkl").exists():
            raise ConfigError(f"experiment {search.experiment_dir!r} exists; resume it with "
                              f"`distracer tune --resume {search.experiment_dir}` or set tune.name")
        save_search(search)
        tuner = build_tuner(search)
    results = tuner.fit()
    return best_of(results, search.settings)


def best_of(results: Any, settings: TuneSettings) -> dict[str, Any]:
    """The best trial by its best-ever `metric` (not its last): config, score and best checkpoint."""
    errors = [str(e).splitlines()[0] for e in results.errors]
    # Trials neither done nor errored: the experiment was interrupted (Ctrl-C) and can be resumed. (Tune marks
    # the last result of a finished or stopped trial done=True; ResultGrid.num_terminated counts interrupted
    # trials as terminated.)
    unfinished = sum(1 for r in results if r.error is None and not r.metrics.get("done"))
    try:
        best = results.get_best_result(metric=settings.metric, mode=settings.mode, scope="all")
    except RuntimeError:
        return {"best": None, "num_trials": len(results), "errors": errors, "unfinished": unfinished}
    checkpoint, checkpoint_score = _best_checkpoint(best, settings)
    history = best.metrics_dataframe
    score = None
    if history is not None and settings.metric in history:
        column = history[settings.metric].dropna()
        score = float(column.max() if settings.mode == "max" else column.min()) if len(column) else None
    return {
        "best": {"trial_dir": best.path, "config": best.config, "score": score,
                 "checkpoint": checkpoint.path if checkpoint is not None else None,
                 "checkpoint_score": checkpoint_score,
                 "last_metrics": {k: best.metrics.get(k) for k in ("env_steps", "eval_return_mean")}},
        "num_trials": len(results),
        "errors": errors,
        "unfinished": unfinished,
    }


def _best_checkpoint(result: Any, settings: TuneSettings) -> tuple[Any, float | None]:
    """The trial's kept checkpoint with the best finite score, else its newest. (Tune's own
    Result.get_best_checkpoint takes max() over scores that include NaN, and NaN can win.)"""
    scored = [(c, m[settings.metric]) for c, m in result.best_checkpoints
              if isinstance(m.get(settings.metric), int | float) and math.isfinite(m[settings.metric])]
    if not scored:
        return result.checkpoint, None
    pick = max if settings.mode == "max" else min
    return pick(scored, key=lambda item: item[1])


def cmd_tune(args: Any) -> int:
    """`distracer tune --config FILE [--set k=v]` or `distracer tune --resume EXPERIMENT_DIR`."""
    from distracer.runtime.ray_setup import init_ray

    if args.resume and (args.config or args.overrides):
        raise ConfigError("--resume takes the experiment's saved config; drop --config/--set")
    if not args.resume and not args.config:
        raise ConfigError("give --config tune_configs/search_*.yaml (or --resume EXPERIMENT_DIR)")
    search = load_saved_search(args.resume) if args.resume else load_search(args.config, args.overrides)
    if args.check:
        print(f"search OK: {search.settings.num_trials()} trial(s) -> {search.experiment_dir}")
        return 0
    import ray

    started = init_ray(search.config.resources)
    try:
        if not args.resume:
            resolve_gpus(search)
        summary = run_search(search, resume=bool(args.resume))
    finally:
        if started:
            ray.shutdown()
    print(format_summary(summary, search))
    if summary["unfinished"]:
        return 130
    return 0 if summary["best"] is not None else 1


def format_summary(summary: dict[str, Any], search: Search) -> str:
    lines = [f"distracer: {summary['num_trials']} trial(s) in {search.experiment_dir}"]
    lines += [f"distracer: trial error: {e}" for e in summary["errors"]]
    if summary["unfinished"]:
        lines.append(f"distracer: interrupted with {summary['unfinished']} trial(s) unfinished; "
                     f"continue with: distracer tune --resume {search.experiment_dir}")
        return "\n".join(lines)
    best = summary["best"]
    if best is None:
        lines.append(f"distracer: no trial reported {search.settings.metric}")
        return "\n".join(lines)
    score = "n/a" if best["score"] is None else f"{best['score']:.1f}"
    lines += [f"distracer: best {search.settings.metric} {score}",
              f"distracer: best config {json.dumps(best['config'], sort_keys=True)}",
              f"distracer: best checkpoint {best['checkpoint']} ({search.settings.metric} {best['checkpoint_score']})",
              f"distracer: resume with: distracer tune --resume {search.experiment_dir}"]
    return "\n".join(lines)
