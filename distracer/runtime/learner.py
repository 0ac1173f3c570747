"""The learner actor: hosts one algorithm's Learner on the GPU when there is one.

Off-policy it pulls batches from the replay shards itself, keeping `prefetch` sample requests in
flight so the GPU never waits on replay, and publishes policy weights by object ref every K updates.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import ray
import torch

from distracer.algos import ActionSpec, make_learner, spec
from distracer.algos.base import DeviceConfig, Learner
from distracer.config import TrainConfig


def build_learner(config: TrainConfig, obs_shape: tuple[int, int, int], action_spec: ActionSpec,
                  device: DeviceConfig | None = None) -> Learner:
    """The run's learner, seeded from the run seed."""
    return make_learner(config.algo, config.algo_config, obs_shape, action_spec, device or config.learner, config.seed)


class LearnerActor:
    def __init__(self, config: TrainConfig, obs_shape: tuple[int, int, int], action_spec: ActionSpec,
                 shards: list[Any] | None = None, learner_state: dict | None = None, use_gpu: bool = False):
        torch.set_num_threads(config.learner.threads or max(1, int(config.resources.learner_cpus)))
        device = DeviceConfig(config.learner.device if use_gpu or config.learner.device != "auto" else "cpu",
                              config.learner.precision, config.learner.threads)
        if use_gpu and device.device == "auto":
            device.device = "cuda"
        self.config = config
        self.learner = build_learner(config, obs_shape, action_spec, device)
        if learner_state is not None:
            self.learner.load_state_dict(learner_state)
        self.shards = shards or []
        self.batch_size = config.algo_config.batch_size if spec(config.algo).off_policy else 0
        self.inflight: deque[ray.ObjectRef] = deque()
        self.shard_rng = np.random.default_rng(config.seed)
        self.shard_weights: np.ndarray | None = None
        self.update_seconds = 0.0
        self.wait_seconds = 0.0

    def device(self) -> str:
        return str(self.learner.device)

    def num_updates(self) -> int:
        return self.learner.num_updates

    # ----- weights -----
    def publish(self) -> list[ray.ObjectRef]:
        """Bump the version and put the policy weights in the object store once for all workers.

        Returned inside a list so the driver gets the ref itself, not the value.
        """
        self.learner.weights_version += 1
        return [ray.put(self.learner.policy_weights())]

    # ----- off-policy -----
    def _refresh_shard_weights(self) -> None:
        """Pick shards in proportion to what they hold: uniform over the union, and never an empty one."""
        sizes = np.array([s["size"] for s in ray.get([shard.stats.remote() for shard in self.shards])], float)
        if sizes.sum() <= 0:
            raise RuntimeError("the learner was asked to train before any replay shard holds a transition")
        self.shard_weights = sizes / sizes.sum()

    def _request(self) -> None:
        index = int(self.shard_rng.choice(len(self.shards), p=self.shard_weights))
        self.inflight.append(self.shards[index].sample.remote(self.batch_size))

    def train_on_replay(self, num_updates: int) -> dict[str, float]:
        """Run `num_updates` updates on replay batches; returns the mean of their metrics."""
        self._refresh_shard_weights()
        while len(self.inflight) < self.config.replay.prefetch:
            self._request()
        sums: dict[str, float] = {}
        for _ in range(num_updates):
            t0 = time.perf_counter()
            batch = ray.get(self.inflight.popleft())
            self._request()  # keep the pipeline full while this batch trains
            t1 = time.perf_counter()
            metrics = self.learner.update(batch)
            self.wait_seconds += t1 - t0
            self.update_seconds += time.perf_counter() - t1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        out = {k: v / max(1, num_updates) for k, v in sums.items()}
        out["num_updates"] = self.learner.num_updates
        out["update_seconds"] = self.update_seconds
        return out

    def timing(self) -> dict[str, float]:
        return {"update_seconds": self.update_seconds, "wait_seconds": self.wait_seconds}

    # ----- on-policy -----
    def train_on_rollouts(self, *rollouts: Any, budget_used: float = 0.0) -> dict[str, float]:
        """One synchronous PPO update on the rollouts of all workers (refs resolved by Ray here); `budget_used`,
        the fraction of the run's time budget spent, for `ppo.lr_horizon='budget'`."""
        from distracer.algos.ppo import concat_rollouts

        rollout = rollouts[0] if len(rollouts) == 1 else concat_rollouts(list(rollouts))
        t0 = time.perf_counter()
        metrics = self.learner.update(rollout, budget_used=budget_used)
        self.update_seconds += time.perf_counter() - t0
        out = {k: float(v) for k, v in metrics.items()}
        out["num_updates"] = self.learner.num_updates
        out["update_seconds"] = self.update_seconds
        return out

    # ----- checkpointing -----
    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        return self.learner.act(obs, explore)
