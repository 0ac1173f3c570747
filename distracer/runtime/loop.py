"""What a training loop (`OffPolicyLoop`, `OnPolicyLoop`) may use of the run it drives: the interface the
`Driver` offers them, so the loops depend on it and not on the driver module (which imports the loops)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import ray

if TYPE_CHECKING:
    from distracer.config import TrainConfig
    from distracer.runtime.actors import RunActors
    from distracer.runtime.report import Counters
    from distracer.runtime.worker import CollectStats
    from distracer.runtime.worker_deaths import WorkerDeaths


class LoopHost(Protocol):
    """The run a loop drives (the `Driver`)."""

    config: TrainConfig
    counters: Counters
    actors: RunActors
    deaths: WorkerDeaths
    weights_ref: Any
    """The newest published weights (a Ray object ref), handed to each collect call."""
    ratio_base: tuple[int, int]
    """(updates, env steps) the replay ratio counts from (`off_policy.allowed_updates`)."""
    stop_requested: threading.Event

    def done(self) -> bool:
        """Training is over: budget reached, or a stop asked for."""

    def periodic(self, drain: Callable[[], None] | None = None) -> None:
        """Evaluation, checkpoints and the progress line, when due."""

    def publish(self) -> None:
        """Publish the learner's weights as the next version."""

    def count(self, stats: CollectStats) -> None:
        """Count a collect call's env steps and episodes."""

    def record_updates(self, metrics: dict[str, float]) -> None:
        """Count the learner's updates and keep their metrics."""

    def budget_used(self) -> float:
        """The fraction of `max_minutes` spent so far (0 without a time budget)."""


def settle(refs: Iterable[Any], timeout_s: float = 10.0) -> None:
    """Read the calls a loop leaves in flight when a part died, failures and all, so that Ray does not log each
    failed one as an 'Unhandled error' stack when it is dropped; the driver's own line says what happened. Calls
    still running after `timeout_s` are left to the actors' teardown."""
    refs = list(refs)
    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:  # noqa: S110 - read to be handled; the death that caused it is reported already
            pass
