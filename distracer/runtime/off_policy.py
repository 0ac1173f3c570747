"""The off-policy loop (SAC+DrQ, DQN): workers stream fragments into the replay shards while the learner
trains on batches it samples itself; the driver holds the replay ratio and hands out weights by version.

    RolloutWorker xN --fragments--> ReplayShard xS --batches (prefetched)--> LearnerActor
          ^                                                                      |
          +------------------- weights (object ref + version) -------------------+
"""

from __future__ import annotations

import time

import ray

from distracer.runtime.loop import LoopHost, settle
from distracer.runtime.worker import CollectStats
from distracer.runtime.worker_deaths import PART_DIED


def allowed_updates(env_steps: int, ratio_base: tuple[int, int], learning_starts: int, replay_ratio: float) -> int:
    """Updates the replay ratio allows after `env_steps` collected.

    Counted from `ratio_base` (updates, env steps): (0, 0) for a fresh run or a resume with its replay; the
    resume point otherwise, so an empty replay refills for `learning_starts` steps before updates resume,
    with no burst of owed updates after it.
    """
    base_updates, base_steps = ratio_base
    return base_updates + int(max(0, env_steps - base_steps - learning_starts) * replay_ratio)


class OffPolicyLoop:
    """One pass of training until the driver says done, then the updates brought up to the ratio.

    Each worker has up to two `collect` calls queued (it starts the next as soon as one returns, never idling
    for a driver round trip); workers pause while the learner is more than about two fragments' worth of
    updates behind; the learner gets at most `off_policy.weights_interval` updates per call, then new weights
    are published.
    """

    def __init__(self, driver: LoopHost):
        self.driver = driver
        cfg = driver.config
        self.algo = cfg.algo_config
        self.fragment_length = cfg.off_policy.fragment_length
        self.weights_interval = cfg.off_policy.weights_interval
        self.steps_per_call = self.fragment_length * cfg.resources.envs_per_worker
        num_workers = len(driver.actors.workers)
        self.max_lag = max(1.0, 2 * self.steps_per_call * num_workers * self.algo.replay_ratio)
        self.sent_version = [0] * num_workers  # -1: the worker needs the weights again (it was restarted)
        self.in_flight = [0] * num_workers
        self.pending: dict[ray.ObjectRef, tuple[str, int]] = {}
        self.learner_busy = False
        self.since_publish = 0
        self.epsilons: list[float | None] = [None] * num_workers
        """The epsilon last handed to each worker (DQN); None for a policy that explores by itself."""

    def allowed_updates(self) -> int:
        d = self.driver
        return allowed_updates(d.counters.env_steps, d.ratio_base, self.algo.learning_starts,
                               self.algo.replay_ratio)

    def owed_updates(self) -> int:
        return self.allowed_updates() - self.driver.counters.num_updates

    def run(self) -> None:
        try:
            self._run()
        except PART_DIED:
            settle(self.pending)
            raise

    def _run(self) -> None:
        d = self.driver
        while not d.done():
            for i in range(len(d.actors.workers)):
                while self.in_flight[i] < 2 and self.owed_updates() <= self.max_lag and not self._budget_taken():
                    self._launch_worker(i)
            if not self.learner_busy and self.owed_updates() > 0:
                n = min(self.owed_updates(), self.weights_interval - self.since_publish)
                self.pending[d.actors.learner.train_on_replay.remote(n)] = ("learner", n)
                self.learner_busy = True
            if not self.pending:
                time.sleep(0.01)
                continue
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            for ref in ready:
                self._finish(ref)
            d.periodic(self.drain)
        # Bring the updates up to the replay ratio for every step collected: the run ends exactly on ratio.
        self.drain()
        if self.owed_updates() > 0 and not d.stop_requested.is_set():
            self.record_updates(ray.get(d.actors.learner.train_on_replay.remote(self.owed_updates())))
            d.publish()

    def _budget_taken(self) -> bool:
        """True when the calls in flight would collect up to `total_env_steps` (never collect far past it)."""
        d = self.driver
        return d.counters.env_steps + sum(self.in_flight) * self.steps_per_call >= d.config.total_env_steps

    def _launch_worker(self, i: int) -> None:
        d = self.driver
        version = d.counters.weights_version
        warmup = d.counters.env_steps < self.algo.learning_starts  # random actions: only a fresh run
        weights = None if self.sent_version[i] == version else d.weights_ref
        epsilon = self.algo.worker_epsilon(d.counters.env_steps, i, len(d.actors.workers))
        self.epsilons[i] = epsilon
        ref = d.actors.workers[i].collect_fragments.remote(self.fragment_length, weights, warmup, epsilon)
        self.sent_version[i] = version
        self.pending[ref] = ("worker", i)
        self.in_flight[i] += 1

    def _finish(self, ref: ray.ObjectRef) -> None:
        d = self.driver
        kind, arg = self.pending.pop(ref)
        if kind == "worker":
            self.in_flight[arg] -= 1
            stats: CollectStats | None = d.deaths.result(ref, arg)
            if stats is None:
                self.sent_version[arg] = -1
            else:
                d.count(stats)
            return
        self.learner_busy = False
        self.record_updates(ray.get(ref))
        self.since_publish += arg
        if self.since_publish >= self.weights_interval:
            d.publish()
            self.since_publish = 0

    def record_updates(self, metrics: dict[str, float]) -> None:
        """The learner's metrics, with the workers' mean epsilon: the exploration the replay's data came from
        (the learner's own policy is never handed one)."""
        handed = [e for e in self.epsilons if e is not None]
        if handed:
            metrics["epsilon"] = float(sum(handed) / len(handed))
        self.driver.record_updates(metrics)

    def drain(self) -> None:
        """Let the work in flight finish and reach the replay: counters, learner and replay are then one
        consistent moment (what a checkpoint must hold)."""
        for ref in list(self.pending):
            self._finish(ref)
        for i, worker in enumerate(self.driver.actors.workers):
            if self.driver.deaths.result(worker.flush.remote(), i) is None:
                self.sent_version[i] = -1
