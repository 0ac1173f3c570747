"""Early stopping and scheduling: Tune's own stoppers and ASHA, configured from the `tune:` section."""

from __future__ import annotations

import math
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.stopper import CombinedStopper, TimeoutStopper, TrialPlateauStopper

from distracer.tuning.settings import TuneSettings


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
