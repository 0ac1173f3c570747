"""RolloutWorker: a CPU actor that steps environments with the latest policy it was handed.

Off-policy, it pushes fragments straight to its replay shard (the driver only sees counts and episode
returns). On-policy (PPO), it returns a fixed-length rollout as an object ref that goes to the learner.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from distracer.algos import ActionSpec, build_policy
from distracer.algos.base import PolicyWeights
from distracer.config import TrainConfig
from distracer.envs import make_env
from distracer.envs.stepping import EPISODE_ENDS, EnvStep, step_envs
from distracer.replay.fragment import FragmentBuilder


class MissingWeightsError(RuntimeError):
    """A collect call without weights reached a worker that holds none: one Ray restarted since it was last
    handed weights. The driver hands them over with its next call."""


@dataclass
class CollectStats:
    """What a worker tells the driver after a collect call: no sample data, only counts and scores."""

    worker_index: int
    env_steps: int
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    episode_ends: list[str] = field(default_factory=list)
    """Why each episode ended (`distracer.envs.stepping.EPISODE_ENDS`): train/ended_* in TensorBoard."""
    weights_version: int = -1
    seconds: float = 0.0
    """Wall-clock seconds the call took inside the worker (the rest of the run it waited): system/workers_busy."""

    def add_episode(self, episode_return: float, length: int, end: str) -> None:
        self.episode_returns.append(episode_return)
        self.episode_lengths.append(length)
        self.episode_ends.append(end)


def env_seed(config: TrainConfig, worker_index: int, env_index: int, salt: int = 0) -> int:
    """A training env's seed: distinct per (run seed, worker, env, restart) and always below eval.seed,
    so evaluation tracks are never trained on."""
    return int(np.random.default_rng([config.seed, worker_index, env_index, salt]).integers(config.eval.seed))


def was_restarted() -> bool:
    """True inside an actor that Ray re-created after it died."""
    if not ray.is_initialized():
        return False
    with warnings.catch_warnings():  # Ray 2.60 warns from inside its own property; nothing to act on
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class RolloutWorker:
    """Steps `envs_per_worker` environments in turn, acting on a batch of their observations."""

    def __init__(self, config: TrainConfig, worker_index: int, shard: Any | str | None = None, restart_salt: int = 0):
        """`shard`: the replay shard's actor handle, or its actor name (the driver passes names: a restartable
        actor whose constructor holds a handle makes Ray log an error on every healthy start)."""
        torch.set_num_threads(1)
        self.config = config
        self.index = worker_index
        self.shard = ray.get_actor(shard) if isinstance(shard, str) else shard
        n = config.resources.envs_per_worker
        # After a restart the same seeds would replay the same tracks; the salt moves them on.
        # A restart is itself unrepeatable, so its salt need not be either: the new process's pid moves each
        # restart onto tracks of its own (a fixed +1 replayed the same tracks after every restart).
        salt = restart_salt + (os.getpid() if was_restarted() else 0)
        self.envs = [
            make_env(config.env, seed=env_seed(config, worker_index, j, salt), training=True) for j in range(n)
        ]
        self.action_spec = ActionSpec.from_space(self.envs[0].action_space)
        self.rng = np.random.default_rng([config.seed, worker_index, salt])
        self.policy = None
        self.weights_version = -1
        self.obs = [env.reset()[0] for env in self.envs]
        self.builders = [FragmentBuilder(stream_id=worker_index * 1000 + j, action_shape=self.action_spec.shape,
                                         action_dtype=self.action_spec.dtype) for j in range(n)]
        for builder, obs in zip(self.builders, self.obs):
            builder.add_reset(self.newest_frame(obs))
        self.ppo_state: Any = None
        self.pending_adds: list[ray.ObjectRef] = []

    # ----- small queries, used by the driver and tests -----
    def pid(self) -> int:
        return os.getpid()

    def ready(self) -> bool:
        return True

    def set_weights(self, weights: PolicyWeights) -> int:
        """Rebuild the CPU policy from published weights (skipped when the version is already held)."""
        if weights.version != self.weights_version or self.policy is None:
            self.policy = build_policy(weights, device="cpu")
            self.policy.set_seed(int(self.rng.integers(2**31)))  # exploration noise differs per worker, reproducibly
            self.weights_version = weights.version
        return self.weights_version

    def newest_frame(self, obs: np.ndarray) -> np.ndarray:
        """The frame the last env step added to a channel-first stack."""
        per_frame = 1 if self.config.env.grayscale else 3
        frame = obs[-per_frame:]
        return frame[0] if per_frame == 1 else np.moveaxis(frame, 0, -1)

    # ----- off-policy -----
    def collect_fragments(
        self,
        num_steps: int,
        weights: PolicyWeights | None = None,
        random_actions: bool = False,
        epsilon: float | None = None,
    ) -> CollectStats:
        """Step every env `num_steps` times, pushing one fragment per env to the shard."""
        started = time.perf_counter()
        if weights is not None:
            self.set_weights(weights)
        if self.policy is None and not random_actions:
            raise MissingWeightsError(f"worker {self.index} has no policy weights yet")
        if epsilon is not None and self.policy is not None:  # the algorithm's worker_epsilon (DQN's schedule)
            self.policy.epsilon = float(epsilon)
        stats = CollectStats(self.index, 0, weights_version=self.weights_version)
        for _ in range(num_steps):
            for j, step in enumerate(step_envs(self.envs, self._choose_actions(random_actions))):
                self._record(j, step, stats)
        self._push_fragments()
        stats.seconds = time.perf_counter() - started
        return stats

    def _choose_actions(self, random_actions: bool) -> np.ndarray:
        if random_actions:
            return np.stack([env.action_space.sample() for env in self.envs])
        with torch.no_grad():
            actions, _ = self.policy.act(torch.as_tensor(np.stack(self.obs)), explore=True)
        return actions.numpy()

    def _record(self, j: int, step: EnvStep, stats: CollectStats) -> None:
        """Add env j's step (and the reset frame of its next episode) to its fragment; count it."""
        self.builders[j].add_step(self.newest_frame(step.obs), step.action, step.reward, step.terminated,
                                  step.truncated)
        stats.env_steps += 1
        if step.episode is not None:
            stats.add_episode(*step.episode, step.end or "other")
        if step.reset:
            self.builders[j].add_reset(self.newest_frame(step.next_obs))
        self.obs[j] = step.next_obs

    def _push_fragments(self) -> None:
        # One round of adds in flight: a slow shard pushes back on its workers, and the worker steps its
        # envs while the shard stores the previous fragments instead of waiting on each round trip.
        self._settle_adds()
        self.pending_adds = [
            self.shard.add.remote(f) for f in (b.flush(self.weights_version) for b in self.builders) if f
        ]

    def flush(self) -> int:
        """Wait until the fragments pushed so far are in the shard (a checkpoint's consistent moment); returns
        how many add calls were waited on."""
        waited = len(self.pending_adds)
        self._settle_adds()
        return waited

    def _settle_adds(self) -> None:
        """Wait for the adds in flight. If the shard died, read every failed add (so Ray does not log each as an
        unhandled error when it is dropped: one stack per fragment) and raise the first failure: the driver's
        one line and its recovery follow."""
        pending, self.pending_adds = self.pending_adds, []
        first: BaseException | None = None
        for ref in pending:
            try:
                ray.get(ref)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    # ----- on-policy (PPO) -----
    def collect_rollout(self, num_steps: int, weights: PolicyWeights) -> tuple[Any, CollectStats]:
        """A fixed-length on-policy rollout with exactly the given weights (synchronous PPO)."""
        from distracer.algos.ppo import collect_rollout

        started = time.perf_counter()
        self.set_weights(weights)
        rollout, self.ppo_state = collect_rollout(self.envs, self.policy, num_steps, self.ppo_state,
                                                  policy_version=self.weights_version,
                                                  sde_sample_freq=self.config.ppo.sde_sample_freq)
        stats = CollectStats(self.index, num_steps * len(self.envs), weights_version=self.weights_version)
        for ret, length, end in rollout_episodes(rollout):
            stats.add_episode(ret, length, end)
        stats.seconds = time.perf_counter() - started
        return rollout, stats


def rollout_episodes(rollout: Any) -> list[tuple[float, int, str]]:
    """Finished episodes (reference return, length, why it ended) that `collect_rollout` recorded."""
    return [(float(r), int(length), EPISODE_ENDS[int(end)])
            for r, length, end in zip(rollout.episode_returns, rollout.episode_lengths, rollout.episode_ends)]
