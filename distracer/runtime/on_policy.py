"""The on-policy loop (PPO): every worker collects a rollout of `num_steps` per env, the learner updates on the
round, new weights are published.

`ppo.policy_lag=0` is exact synchronous PPO: workers wait for the update. With 1, workers collect the next
round with the weights before the update while the learner trains, so both run at once (on separate cores)
and each rollout is one weights version stale; PPO's ratio is taken against the behaviour policy's stored
log-probs, as in APPO / IMPALA-style PPO (or, with `ppo.decoupled`, clipped against the proximal policy).
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.exceptions import RayTaskError

from distracer.runtime.loop import LoopHost, settle
from distracer.runtime.worker import CollectStats
from distracer.runtime.worker_deaths import PART_DIED


class OnPolicyLoop:
    def __init__(self, driver: LoopHost):
        self.driver = driver
        self.num_steps = driver.config.algo_config.num_steps
        self.lag = driver.config.algo_config.policy_lag

    def _launch(self) -> list[Any]:
        d = self.driver
        return [w.collect_rollout.options(num_returns=2).remote(self.num_steps, d.weights_ref)
                for w in d.actors.workers]

    def run(self) -> None:
        self.outstanding: list[Any] = []  # the calls in flight, read when a part dies (`loop.settle`)
        try:
            self._run()
        except PART_DIED:
            settle(self.outstanding)
            raise

    def _run(self) -> None:
        d = self.driver
        calls: list[Any] | None = None
        while not d.done():
            calls = calls or self._launch()
            metrics_ref = d.actors.learner.train_on_rollouts.remote(*[c[0] for c in calls],
                                                                    budget_used=d.budget_used())
            stats_refs = [c[1] for c in calls]
            calls = self._launch() if self.lag else None  # lag: with the weights the learner is updating now
            self.outstanding = [metrics_ref, *stats_refs, *[ref for c in calls or [] for ref in c]]
            collected = self._round_stats(stats_refs)
            if collected is None:  # a worker died: Ray restarts it; the update on its rollout fails, untouched
                with contextlib.suppress(RayTaskError, *PART_DIED):
                    ray.get(metrics_ref)
                continue
            for stats in collected:
                d.count(stats)
            d.record_updates(ray.get(metrics_ref))
            d.publish()
            d.periodic()
        for stats in self._round_stats([c[1] for c in calls or []]) or []:  # lag: collected, not trained on,
            d.count(stats)                                                   # counted all the same

    def _round_stats(self, refs: list[ray.ObjectRef]) -> list[CollectStats] | None:
        """Each worker's rollout stats, or None when a worker died collecting (counted as one restart; the
        rollouts of that round are then dropped, uncounted and untrained). Other failures propagate."""
        out = [self.driver.deaths.result(ref, index) for index, ref in enumerate(refs)]
        return None if any(stats is None for stats in out) else out
