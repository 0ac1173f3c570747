"""`Rollout`, the on-policy data contract between rollout workers and the learner, and `collect_rollout`,
which fills one from a worker's envs (stepped by `distracer.envs.stepping.step_envs`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from distracer.algos.base import (
    ActionSpec,
)
from distracer.algos.ppo.policy import PPOPolicy
from distracer.envs.stepping import EPISODE_ENDS, EnvStep, step_envs
from distracer.errors import ConfigError


@dataclass
class Rollout:
    """One fixed-length on-policy fragment from N envs over T steps (numpy arrays, time-major).

    Row t of each [T, N] array describes the transition from obs[t] taken with actions[t].
    Bootstrapping: if terminated[t], nothing (value 0); elif truncated[t], final_values[t] (the value of the
    episode's last observation, computed by the acting policy before the env was reset); else the value of
    the next row's observation, and for t = T-1 `next_value`, the value of the observation the envs are in
    after the last step.
    """

    obs: np.ndarray
    """uint8 [T, N, C, H, W], channel-first, the observation each action was taken in."""
    actions: np.ndarray
    """The policy's unclipped sample: float32 [T, N, dim] (continuous) or int64 [T, N] (discrete)."""
    logprob: np.ndarray
    """float32 [T, N], log-prob of `actions` under the acting policy."""
    value: np.ndarray
    """float32 [T, N], the acting policy's value of obs[t]."""
    rewards: np.ndarray
    """float32 [T, N], raw env rewards (the learner normalises them if configured)."""
    terminated: np.ndarray
    """bool [T, N]: the episode ended in a terminal state at step t (no bootstrap)."""
    truncated: np.ndarray
    """bool [T, N]: the episode was cut at step t (time limit); bootstrap with final_values[t]."""
    final_values: np.ndarray
    """float32 [T, N]: value of the final observation where truncated (and not terminated), else 0."""
    next_value: np.ndarray
    """float32 [N]: value of the observation after the last step (post-reset where an episode ended)."""
    episode_returns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """float32 [E]: returns of the episodes that finished in this rollout (info["episode"]["r"])."""
    episode_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """int64 [E]: their lengths (info["episode"]["l"])."""
    episode_ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    """int8 [E]: why each ended, as an index into `distracer.envs.stepping.EPISODE_ENDS`."""
    policy_version: int = -1
    """Weights version of the acting policy (-1 = unknown)."""

    @classmethod
    def empty(cls, num_steps: int, num_envs: int, policy: PPOPolicy, policy_version: int = -1) -> Rollout:
        """A rollout of uninitialised arrays for `collect_rollout` to fill (terminated, truncated and
        final_values start at False/0; next_value and the episodes are set when it ends)."""
        t, n = num_steps, num_envs
        if policy.continuous:
            actions = np.empty((t, n, policy.action_dim), np.float32)
        else:
            actions = np.empty((t, n), np.int64)
        return cls(
            obs=np.empty((t, n, *policy.obs_shape), np.uint8), actions=actions,
            logprob=np.empty((t, n), np.float32), value=np.empty((t, n), np.float32),
            rewards=np.empty((t, n), np.float32), terminated=np.zeros((t, n), bool), truncated=np.zeros((t, n), bool),
            final_values=np.zeros((t, n), np.float32), next_value=np.zeros(n, np.float32),
            policy_version=int(policy_version),
        )

    @property
    def num_steps(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_envs(self) -> int:
        return int(self.obs.shape[1])

    @property
    def episodes(self) -> list[tuple[float, int]]:
        """Finished episodes as (return, length) pairs."""
        return [(float(r), int(n)) for r, n in zip(self.episode_returns, self.episode_lengths)]

    def check(self, obs_shape: tuple[int, ...], action_spec: ActionSpec) -> None:
        """Refuse a rollout whose shapes or dtypes do not fit the learner, in one line."""
        if self.obs.ndim != 5 or tuple(self.obs.shape[2:]) != tuple(obs_shape):
            raise ConfigError(
                f"rollout obs shape {tuple(self.obs.shape)} does not match [T, N, *{tuple(obs_shape)}]"
            )
        if self.obs.dtype != np.uint8:
            raise ConfigError(f"rollout obs dtype is {self.obs.dtype}; uint8 expected")
        tn = tuple(self.obs.shape[:2])
        want_actions = tn + ((action_spec.n,) if action_spec.kind == "continuous" else ())
        if tuple(self.actions.shape) != want_actions:
            raise ConfigError(f"rollout actions shape {tuple(self.actions.shape)}; expected {want_actions}")
        for name in ("logprob", "value", "rewards", "terminated", "truncated", "final_values"):
            if tuple(getattr(self, name).shape) != tn:
                raise ConfigError(f"rollout {name} shape {tuple(getattr(self, name).shape)}; expected {tn}")
        if tuple(self.next_value.shape) != tn[1:]:
            raise ConfigError(f"rollout next_value shape {tuple(self.next_value.shape)}; expected {tn[1:]}")

    @staticmethod
    def concat(rollouts: list[Rollout]) -> Rollout:
        """Join rollouts of equal length from several workers along the env axis (in the given order)."""
        if not rollouts:
            raise ConfigError("no rollouts to join")
        if len({r.num_steps for r in rollouts}) != 1:
            raise ConfigError(f"rollouts have different lengths: {sorted({r.num_steps for r in rollouts})}")
        kwargs: dict[str, Any] = {}
        for f in fields(Rollout):
            values = [getattr(r, f.name) for r in rollouts]
            if f.name in ("episode_returns", "episode_lengths", "episode_ends", "next_value"):
                kwargs[f.name] = np.concatenate(values, axis=0)
            elif f.name == "policy_version":
                kwargs[f.name] = min(values)
            else:
                kwargs[f.name] = np.concatenate(values, axis=1)
        return Rollout(**kwargs)


def concat_rollouts(rollouts: list[Rollout]) -> Rollout:
    """`Rollout.concat`: join the rollouts of several workers along the env axis."""
    return Rollout.concat(rollouts)


@dataclass
class RolloutState:
    """What a rollout worker carries between `collect_rollout` calls: the envs' current observations.

    `seed`: if set, env i is reset with seed + i on the first call (otherwise plain reset(), e.g. for envs
    from `make_env(seed=...)`, which seed themselves). `generator`: the sampling RNG used when the policy
    has none of its own (`PPOPolicy.set_seed`); made from `seed` when given, else torch's global RNG is used.
    """

    seed: int | None = None
    obs: np.ndarray | None = None
    generator: torch.Generator | None = None
    steps: int = 0
    """Env steps taken so far, summed over envs."""


@torch.no_grad()
def collect_rollout(
    envs: list[gym.Env],
    policy: PPOPolicy,
    num_steps: int,
    state: RolloutState | None = None,
    policy_version: int = -1,
    sde_sample_freq: int = -1,
) -> tuple[Rollout, RolloutState]:
    """Step each env `num_steps` times with the exploring policy; returns (rollout, state).

    With a gSDE policy, new noise matrices (one per env) are drawn at the start and every `sde_sample_freq`
    steps (-1: only at the start), as SB3's `collect_rollouts` does.

    Pass the returned state to the next call (it is also updated in place; None on the first call resets
    every env). Envs are plain gymnasium envs returning uint8 channel-first obs; each is reset when its
    episode terminates or truncates. Finished episodes are reported from info["episode"]
    (RecordEpisodeStatistics) when the env has it: `rollout.episode_returns/episode_lengths/episodes`, and why each
    ended: `rollout.episode_ends`.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps={num_steps} must be >= 1")
    state = RolloutState() if state is None else state
    n = len(envs)
    device = next(policy.parameters()).device
    generator = _start(envs, policy, state, device)
    rollout = Rollout.empty(num_steps, n, policy, policy_version)
    episodes: list[tuple[float, int, str]] = []
    obs = state.obs
    for t in range(num_steps):
        if t == 0 or (sde_sample_freq > 0 and t % sde_sample_freq == 0):
            policy.reset_noise(n, generator)
        rollout.obs[t] = obs
        actions, extras = policy.sample(torch.as_tensor(obs, device=device), True, generator)
        rollout.actions[t] = extras["raw_action"].cpu().numpy()
        rollout.logprob[t] = extras["logprob"].cpu().numpy()
        rollout.value[t] = extras["value"].cpu().numpy()
        next_obs = np.empty_like(obs)
        final_obs = {i: step.obs for i, step in enumerate(step_envs(envs, actions.cpu().numpy()))
                     if _record(rollout, t, i, step, next_obs, episodes)}
        if final_obs:  # bootstrap the cut episodes from their last observation, before the reset
            idx = sorted(final_obs)
            values = policy.predict_value(torch.as_tensor(np.stack([final_obs[i] for i in idx]), device=device))
            rollout.final_values[t, idx] = values.cpu().numpy()
        obs = next_obs
    state.obs = obs
    state.steps += num_steps * n
    rollout.next_value = policy.predict_value(torch.as_tensor(obs, device=device)).cpu().numpy().astype(np.float32)
    rollout.episode_returns = np.asarray([r for r, _, _ in episodes], np.float32)
    rollout.episode_lengths = np.asarray([length for _, length, _ in episodes], np.int64)
    rollout.episode_ends = np.asarray([EPISODE_ENDS.index(end) for _, _, end in episodes], np.int8)
    return rollout, state


def _start(envs: list[gym.Env], policy: PPOPolicy, state: RolloutState, device: torch.device) -> Any:
    """Make the state's generator and first observations on the first call; the sampling generator to use.
    Raises ConfigError when the envs' observations are not what the policy takes."""
    if state.generator is None and state.seed is not None:
        state.generator = torch.Generator(device=device)
        state.generator.manual_seed(int(state.seed))
    if state.obs is None:
        first = [
            env.reset(seed=None if state.seed is None else int(state.seed) + i)[0] for i, env in enumerate(envs)
        ]
        state.obs = np.stack(first)
    if tuple(state.obs.shape[1:]) != policy.obs_shape or state.obs.dtype != np.uint8:
        raise ConfigError(
            f"env observations are {state.obs.dtype} {tuple(state.obs.shape[1:])}; "
            f"the policy takes uint8 {policy.obs_shape} (channel-first)"
        )
    return policy.generator if policy.generator is not None else state.generator


def _record(rollout: Rollout, t: int, i: int, step: EnvStep, next_obs: np.ndarray,
            episodes: list[tuple[float, int, str]]) -> bool:
    """Store env i's step t in `rollout` (its next observation into `next_obs[i]`, a finished episode and why it
    ended into `episodes`); True when the step cut the episode (truncated, not terminated), whose value must then
    be bootstrapped from `step.obs`."""
    rollout.rewards[t, i] = step.reward
    rollout.terminated[t, i] = step.terminated
    rollout.truncated[t, i] = step.truncated and not step.terminated
    if step.episode is not None:
        episodes.append((*step.episode, step.end or "other"))
    next_obs[i] = step.next_obs
    return bool(rollout.truncated[t, i])
