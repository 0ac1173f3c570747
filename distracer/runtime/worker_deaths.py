"""Rollout-worker deaths, seen from the driver: Ray restarts a dead worker (max_restarts=-1) and every call in
flight when it died fails; one death is counted once, and a restarted worker is handed the weights again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from distracer.errors import ConfigError
from distracer.runtime.worker import MissingWeightsError

PART_DIED = (RayActorError, ObjectLostError)
"""What a dead actor's calls raise: its own death, or a lost object it owned (weights, a rollout)."""


class WorkerDeaths:
    """Reads worker results, telling a dead worker from a failure elsewhere.

    `on_death(index)` is called once per death (log it, count a restart). A worker Ray cannot bring back
    (its constructor fails again) raises a one-line ConfigError: waiting for it would spin forever.
    """

    def __init__(self, on_death: Callable[[int], None]):
        self.on_death = on_death
        self.restarting: set[int] = set()  # workers whose death was counted and that have not answered since

    def result(self, ref: ray.ObjectRef, index: int) -> Any | None:
        """The result of worker `index`'s call, or None if the worker died (it needs the weights again).

        Raises what is not the worker's own death, e.g. a RayTaskError from a replay shard it called."""
        try:
            value = ray.get(ref)
        except MissingWeightsError:  # it died and came back between two calls
            self.died(index)
            return None
        except RayActorError as exc:
            if isinstance(exc, RayTaskError):  # the worker lives; a part it calls (its shard) died
                raise
            self.died(index, exc)
            return None
        self.restarting.discard(index)
        return value

    def died(self, index: int, exc: BaseException | None = None) -> None:
        if getattr(exc, "actor_init_failed", False):
            raise ConfigError(f"rollout worker {index} died and cannot restart ({str(exc).splitlines()[0][:200]})")
        if index not in self.restarting:  # each call in flight fails; one death is one restart
            self.restarting.add(index)
            self.on_death(index)

    def clear(self) -> None:
        self.restarting.clear()
