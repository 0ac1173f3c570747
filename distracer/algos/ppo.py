"""Proximal Policy Optimization (Schulman et al. 2017) from pixels, laid out like Stable-Baselines3's PPO.

Read top to bottom: `PPOConfig` (every hyperparameter, documented), `PPOPolicy` (the acting part that
rollout workers hold), `Rollout` + `collect_rollout` (the on-policy data contract with the workers),
`compute_gae`, and `PPOLearner.update`, which does the whole PPO update for one rollout.

References: CleanRL `ppo_continuous_action.py` / `ppo_atari.py`, SB3 `PPO` + `ActorCriticPolicy`.
The policy has SB3's CnnPolicy layout and module names (`features_extractor` = NatureCNN shared by actor
and critic, `action_net`, `value_net`, `log_std`), so `to_sb3_state_dict` / `from_sb3_state_dict` turn
weights into an SB3 `PPO("CnnPolicy")` policy state dict and back by renaming keys only.

Continuous actions: a diagonal Gaussian with a state-independent `log_std`; the env gets the sample
clipped to [-1, 1], while log-probs are of the unclipped sample and the rollout stores the unclipped
sample (as SB3 does). Discrete actions: a Categorical over `n` actions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distracer.algos.base import (
    ActionSpec,
    DeviceConfig,
    Learner,
    NonFiniteLossError,
    Policy,
    check_finite,
    config_dict,
)
from distracer.algos.nets import NatureCNN, check_obs_shape
from distracer.errors import ConfigError

LR_SCHEDULES = ("constant", "linear")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """PPO hyperparameters. Defaults are RL Zoo's tuned CarRacing-v3 PPO (rl-baselines3-zoo hyperparams/ppo.yml:
    8 envs x 512 steps, minibatch 128, lr 1e-4 decaying linearly, no entropy bonus, [256] GELU heads, gSDE with
    log_std -2, no orthogonal init), which learns CarRacing where SB3's generic defaults do not (docs/RESULTS.md)."""

    num_envs: int = 8
    """Environments stepped in parallel across all rollout workers; one rollout holds num_steps * num_envs
    transitions (SB3 `n_envs`). The seed project found 8 clearly better than 4 on CarRacing."""
    num_steps: int = 512
    """Steps per environment per rollout (SB3 `n_steps`, CleanRL `num_steps`)."""
    n_epochs: int = 10
    """Passes over each rollout, in shuffled minibatches."""
    minibatch_size: int = 128
    """Transitions per gradient step (SB3 `batch_size`). A last, smaller minibatch takes the remainder."""
    lr: float = 1e-4
    """Adam learning rate (at the start of the schedule)."""
    lr_schedule: str = "linear"
    """'constant', or 'linear': decays to 0 over `total_updates` rollouts (lr * (1 - k / total_updates) at
    update k, as CleanRL's anneal_lr); the schedule's position is checkpointed."""
    total_updates: int = 0
    """Horizon of the linear schedule, in update() calls (rollouts); the runtime derives it from its step
    budget with `PPOConfig.updates_for(total_env_steps)`. Unused by 'constant'."""
    adam_eps: float = 1e-5
    """Adam epsilon (SB3 and CleanRL use 1e-5 for PPO)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda: 1 is Monte-Carlo returns with bootstrap, 0 is one-step TD."""
    clip_range: float = 0.2
    """PPO's probability-ratio clip epsilon."""
    clip_range_vf: float | None = None
    """Clip the value prediction to old value +- this (in reward units, so mind reward scaling); None = off."""
    ent_coef: float = 0.0
    """Entropy bonus weight (SB3's and RL Zoo's CarRacing value is 0; gSDE keeps exploring without one)."""
    vf_coef: float = 0.5
    """Value loss weight in the shared loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    target_kl: float | None = None
    """Stop the epochs of an update once a minibatch's approx KL exceeds 1.5 * target_kl (SB3); None = off."""
    normalize_advantage: bool = True
    """Normalise advantages to zero mean, unit std within each minibatch (SB3)."""
    normalize_reward: bool = True
    """Scale rewards by a running std of discounted returns (the reward half of SB3 VecNormalize); its state
    is part of the learner and checkpointed. The seed project trained with it on (RL Zoo does too)."""
    reward_clip: float = 10.0
    """Clip normalised rewards to +- this (VecNormalize clip_reward)."""
    reward_norm_epsilon: float = 1e-8
    """Added to the return variance before the square root (VecNormalize epsilon)."""
    log_std_init: float = -2.0
    """Initial log std of the Gaussian policy, or of gSDE's noise weights (RL Zoo: -2). Std 1 (SB3's default 0)
    on [-1, 1] controls clips a third of samples and brakes hard one step in six. Continuous actions only."""
    ortho_init: bool = False
    """SB3's orthogonal init: gain sqrt(2) for the CNN, 0.01 for action_net, 1 for value_net, zero biases."""
    features_dim: int = 512
    """NatureCNN output features (SB3 CnnPolicy uses 512)."""
    net_arch_pi: tuple[int, ...] = (256,)
    """Hidden layers of the policy head between the shared CNN features and `action_net` (SB3
    `net_arch=dict(pi=...)`; RL Zoo's CarRacing uses [256]); [] puts the action layer on the CNN features."""
    net_arch_vf: tuple[int, ...] = (256,)
    """Hidden layers of the separate value head (SB3 `net_arch=dict(vf=...)`)."""
    activation: str = "gelu"
    """Activation of the head MLPs: 'tanh' (SB3's default), 'relu' or 'gelu' (RL Zoo's CarRacing)."""
    use_sde: bool = True
    """Generalized State-Dependent Exploration (gSDE, Raffin et al. 2021) instead of independent Gaussian noise
    per step: smooth, state-dependent steering noise, as RL Zoo's CarRacing PPO uses. Continuous actions only."""
    sde_sample_freq: int = 4
    """Draw new gSDE noise matrices every this many steps of each rollout (-1: once per rollout)."""
    policy_lag: int = 0
    """0: exact synchronous PPO (workers wait while the learner updates). 1: workers collect the next rollout
    with the previous weights during the update, so collection and learning overlap (about twice the
    throughput with one worker and the learner on two cores); each rollout is then one version stale."""
    decoupled: bool = False
    """Decoupled PPO objective (Hilton, Cobbe & Schulman 2022, "Batch size-invariance for policy optimization"):
    clip the ratio against the *proximal* policy (the learner's policy when the update starts) instead of the
    behaviour policy that collected the rollout, and weight each sample by pi_prox / pi_behaviour, truncated at
    `is_weight_clip`. With `policy_lag: 1` the rollout is one version stale, so standard PPO starts with ratios
    far from 1 and its approx_kl (and target_kl) counts the lag; decoupled, both measure this update alone.
    Identical to standard PPO when the rollout comes from the current weights (no lag); costs one forward pass
    over the rollout per update."""
    is_weight_clip: float = 1.0
    """Upper bound of the decoupled objective's importance weight pi_prox / pi_behaviour (V-trace's rho-bar, 1 in
    IMPALA): a stale sample never counts more than a fresh one."""
    channels_last: bool = True
    """Run the CNN in channels-last (NHWC) memory layout: faster convolutions on CPU (oneDNN), the usual layout
    for GPU tensor cores. Workers' policies use the same layout, so their log-probs match the learner's."""

    def validate(self) -> None:
        positive_ints = ("num_envs", "num_steps", "n_epochs", "features_dim")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"ppo.{name}={getattr(self, name)} must be >= 1")
        if self.minibatch_size < 2:
            raise ConfigError(f"ppo.minibatch_size={self.minibatch_size} must be >= 2 (advantages are normalised)")
        for name in ("lr", "clip_range", "adam_eps", "max_grad_norm", "reward_clip", "reward_norm_epsilon"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ppo.{name}={getattr(self, name)} must be > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"ppo.lr_schedule={self.lr_schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule == "linear" and self.total_updates < 1:
            raise ConfigError(
                f"ppo.total_updates={self.total_updates} must be >= 1 with lr_schedule='linear' "
                "(set it from the step budget: PPOConfig.updates_for)"
            )
        if self.total_updates < 0:
            raise ConfigError(f"ppo.total_updates={self.total_updates} must be >= 0")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"ppo.gamma={self.gamma} must be in [0, 1]")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ConfigError(f"ppo.gae_lambda={self.gae_lambda} must be in [0, 1]")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ConfigError(f"ppo.clip_range_vf={self.clip_range_vf} must be > 0, or null for no value clipping")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ConfigError(f"ppo.target_kl={self.target_kl} must be > 0, or null for no early stop")
        for name in ("ent_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name}={getattr(self, name)} must be >= 0")
        if not math.isfinite(self.log_std_init):
            raise ConfigError(f"ppo.log_std_init={self.log_std_init} must be finite")
        for name in ("net_arch_pi", "net_arch_vf"):
            if any(width < 1 for width in getattr(self, name)):
                raise ConfigError(f"ppo.{name}={list(getattr(self, name))}: every layer width must be >= 1")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ppo.activation={self.activation!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
        if not self.is_weight_clip > 0:
            raise ConfigError(f"ppo.is_weight_clip={self.is_weight_clip} must be > 0")
        if self.policy_lag not in (0, 1):
            raise ConfigError(f"ppo.policy_lag={self.policy_lag} must be 0 (synchronous) or 1 (overlapped)")
        if self.sde_sample_freq == 0 or self.sde_sample_freq < -1:
            raise ConfigError(f"ppo.sde_sample_freq={self.sde_sample_freq} must be >= 1, or -1 for once per rollout")

    @property
    def rollout_size(self) -> int:
        """Transitions per rollout (per update() call)."""
        return self.num_steps * self.num_envs

    def updates_for(self, total_env_steps: int, num_envs: int | None = None) -> int:
        """How many update() calls a budget of `total_env_steps` agent steps gives (for `total_updates`).

        `num_envs`: the envs actually stepped (workers x envs per worker) when it differs from `self.num_envs`.
        """
        return max(1, total_env_steps // (self.num_steps * (num_envs or self.num_envs)))


# ----------------------------------------------------------------------------------------------------
# Policy
# ----------------------------------------------------------------------------------------------------
class ActionHead(NamedTuple):
    """What the actor half of `PPOPolicy.forward` returns."""

    out: torch.Tensor
    """Gaussian mean (B, dim) or Categorical logits (B, n)."""
    latent: torch.Tensor
    """The policy MLP's output (B, L): the features gSDE's noise is a linear function of."""


class PPOPolicy(Policy):
    """Actor-critic with SB3 ActorCriticPolicy's layout: a shared NatureCNN, `mlp_extractor` (separate policy
    and value MLPs, SB3 `net_arch=dict(pi=..., vf=...)`), `action_net`, `value_net`, `log_std`.

    Continuous exploration is a diagonal Gaussian with a state-independent `log_std` (B, dim), or, with
    `use_sde`, generalized State-Dependent Exploration (gSDE, Raffin et al. 2021, arXiv:2005.05719; SB3's
    `StateDependentNoiseDistribution` with full_std, exp, unsquashed): the noise is `latent @ W` with
    W ~ N(0, exp(log_std)^2) of shape (L, dim), resampled per env every few steps (`reset_noise`), so
    exploration is smooth in time as steering must be; the log-prob is of N(mean, (latent^2) @ exp(log_std)^2).

    `act()` returns actions for the env (continuous: clipped to [-1, 1]) and extras:
    `logprob` (B,) of the sampled action, `value` (B,), and `raw_action`, the unclipped sample that the
    rollout must store (continuous (B, dim) float32; discrete (B,) int64, same as the action).
    Sampling uses `self.generator` when set (a torch.Generator on the policy's device; `set_seed` makes
    one), else torch's global RNG, so workers and learners can make exploration reproducible.
    """

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        action_kind: str = "continuous",
        action_dim: int = 2,
        features_dim: int = 512,
        log_std_init: float = 0.0,
        ortho_init: bool = True,
        channels_last: bool = False,
        net_arch_pi: tuple[int, ...] = (),
        net_arch_vf: tuple[int, ...] = (),
        activation: str = "tanh",
        use_sde: bool = False,
    ):
        super().__init__()
        if action_kind not in ("continuous", "discrete"):
            raise ConfigError(f"action kind {action_kind!r} is unknown; allowed: continuous, discrete")
        if use_sde and action_kind != "continuous":
            raise ConfigError("ppo.use_sde needs continuous actions")
        self.obs_shape = tuple(int(x) for x in obs_shape)
        self.action_kind = action_kind
        self.action_dim = int(action_dim)
        self.use_sde = bool(use_sde)
        self.features_extractor = NatureCNN(self.obs_shape, features_dim)
        self.mlp_extractor = MlpExtractor(features_dim, tuple(net_arch_pi), tuple(net_arch_vf), activation)
        latent_pi, latent_vf = self.mlp_extractor.latent_dim_pi, self.mlp_extractor.latent_dim_vf
        self.action_net = nn.Linear(latent_pi, self.action_dim)
        self.value_net = nn.Linear(latent_vf, 1)
        if action_kind == "continuous":
            shape = (latent_pi, self.action_dim) if self.use_sde else (self.action_dim,)
            self.log_std = nn.Parameter(torch.full(shape, float(log_std_init)))
        # gSDE noise matrices (K, L, dim): row k serves env k (one matrix for all when K != batch).
        self.register_buffer("exploration_matrices", torch.zeros(0), persistent=False)
        self.generator: torch.Generator | None = None
        if ortho_init:
            gains = ((self.features_extractor, math.sqrt(2)), (self.mlp_extractor, math.sqrt(2)),
                     (self.action_net, 0.01), (self.value_net, 1.0))
            for module, gain in gains:
                module.apply(partial(_init_weights, gain=gain))
        if channels_last:  # after the orthogonal init, which writes through a contiguous view
            self.features_extractor.to_channels_last()

    @property
    def continuous(self) -> bool:
        return self.action_kind == "continuous"

    def set_seed(self, seed: int) -> None:
        """Give exploration its own seeded generator (rollout workers call this after rebuilding the policy)."""
        self.generator = torch.Generator(device=next(self.parameters()).device)
        self.generator.manual_seed(int(seed))

    def forward(self, obs: torch.Tensor) -> tuple[ActionHead, torch.Tensor]:
        """uint8 obs (B, C, H, W) -> (ActionHead, value (B,))."""
        latent_pi, latent_vf = self.mlp_extractor(self.features_extractor(obs))
        return ActionHead(self.action_net(latent_pi), latent_pi), self.value_net(latent_vf).squeeze(-1)

    def distribution(self, head: ActionHead) -> torch.distributions.Distribution:
        out = head.out.float()
        if not self.continuous:
            return torch.distributions.Categorical(logits=out)
        std = self.log_std.float().exp()
        if self.use_sde:  # SB3 StateDependentNoiseDistribution.proba_distribution (learn_features=False)
            variance = (head.latent.detach().float() ** 2) @ (std**2)
            return torch.distributions.Normal(out, torch.sqrt(variance + SDE_EPSILON))
        return torch.distributions.Normal(out, std.expand_as(out))

    def log_prob_entropy(self, head: ActionHead, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of (unclipped) `actions` and entropy, summed over action dims for the Gaussian."""
        dist = self.distribution(head)
        if self.continuous:
            return dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)
        return dist.log_prob(actions), dist.entropy()

    def reset_noise(self, batch: int, generator: torch.Generator | None = None) -> None:
        """Draw new gSDE noise matrices, one per env (SB3 `reset_noise(n_envs)`); a no-op without gSDE."""
        if not self.use_sde:
            return
        std = self.log_std.detach().float().exp()
        noise = torch.randn((batch, *std.shape), generator=generator, device=std.device)
        self.exploration_matrices = noise * std

    def _sde_noise(self, latent: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.exploration_matrices.numel() == 0:
            self.reset_noise(1, generator)
        mats = self.exploration_matrices
        latent = latent.detach().float()
        if len(mats) != len(latent):
            return latent @ mats[0]
        return torch.bmm(latent.unsqueeze(1), mats).squeeze(1)

    def sample(
        self, obs: torch.Tensor, explore: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        head, value = self(obs)
        out = head.out.float()
        if self.continuous:
            if not explore:
                raw = out
            elif self.use_sde:
                raw = out + self._sde_noise(head.latent, generator)
            else:
                noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
                raw = out + self.log_std.float().exp() * noise
            actions = raw.clamp(-1.0, 1.0)
        else:
            if explore:
                probs = torch.softmax(out, dim=-1)
                raw = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                raw = out.argmax(dim=-1)
            actions = raw
        logprob, _ = self.log_prob_entropy(head, raw)
        return actions, {"logprob": logprob, "value": value.float(), "raw_action": raw}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One call, no memory: with gSDE each call draws fresh noise matrices (rollouts keep theirs for
        `sde_sample_freq` steps through `sample`), so a call depends only on the generator's state."""
        if explore:
            self.reset_noise(len(obs), self.generator)
        return self.sample(obs, explore, self.generator)

    @torch.no_grad()
    def predict_value(self, obs: torch.Tensor) -> torch.Tensor:
        _, latent_vf = self.mlp_extractor(self.features_extractor(obs))
        return self.value_net(latent_vf).squeeze(-1).float()

    @torch.no_grad()
    def action_std(self, head: ActionHead) -> float:
        """Mean std of the continuous action distribution over the batch (the exploration scale)."""
        return float(self.distribution(head).stddev.mean().item())


ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
SDE_EPSILON = 1e-6  # SB3 StateDependentNoiseDistribution's epsilon under the square root


class MlpExtractor(nn.Module):
    """SB3's `MlpExtractor`: separate policy and value MLPs on the shared features (same module names, so
    weights load into SB3 with `net_arch=dict(pi=..., vf=...)`). Empty layer lists are identities."""

    def __init__(self, features_dim: int, pi: tuple[int, ...], vf: tuple[int, ...], activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"ppo.activation={activation!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
        self.policy_net, self.latent_dim_pi = _mlp_layers(features_dim, pi, ACTIVATIONS[activation])
        self.value_net, self.latent_dim_vf = _mlp_layers(features_dim, vf, ACTIVATIONS[activation])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy_net(features), self.value_net(features)


def _mlp_layers(in_dim: int, widths: tuple[int, ...], activation: type[nn.Module]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for width in widths:
        if width < 1:
            raise ConfigError(f"ppo net_arch widths must be >= 1, got {list(widths)}")
        layers += [nn.Linear(in_dim, width), activation()]
        in_dim = width
    return nn.Sequential(*layers), in_dim


def _init_weights(module: nn.Module, gain: float) -> None:
    """SB3 ActorCriticPolicy.init_weights: orthogonal weights, zero biases, for Linear and Conv2d."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.orthogonal_(module.weight, gain=gain)
        if module.bias is not None:
            module.bias.data.fill_(0.0)


_SB3_EXTRACTORS = ("features_extractor", "pi_features_extractor", "vf_features_extractor")


def to_sb3_state_dict(policy: PPOPolicy) -> dict[str, torch.Tensor]:
    """The policy's weights keyed as SB3 `ActorCriticPolicy` (CnnPolicy, shared extractor) names them.

    SB3 registers the shared NatureCNN under three names (features_extractor, pi_/vf_features_extractor);
    `mlp_extractor` keeps its name (empty, with no parameters, for net_arch=[]). Loads with strict=True.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in policy.state_dict().items():
        value = value.detach().cpu().clone()
        if key.startswith("features_extractor."):
            rest = key[len("features_extractor."):]
            for prefix in _SB3_EXTRACTORS:
                out[f"{prefix}.{rest}"] = value.clone()
        else:
            out[key] = value
    return out


def from_sb3_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_sb3_state_dict`: an SB3 CnnPolicy state dict -> PPOPolicy keys (shared extractor)."""
    out = {}
    for key, value in state.items():
        if key.startswith(("pi_features_extractor.", "vf_features_extractor.")):
            continue
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Rollout: the contract between rollout workers and the learner
# ----------------------------------------------------------------------------------------------------
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
    policy_version: int = -1
    """Weights version of the acting policy (-1 = unknown)."""

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
            if f.name in ("episode_returns", "episode_lengths", "next_value"):
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


def _episode_stats(info: dict) -> tuple[float, int] | None:
    episode = info.get("episode")
    if not episode:
        return None
    return float(np.asarray(episode["r"]).reshape(-1)[0]), int(np.asarray(episode["l"]).reshape(-1)[0])


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
    (RecordEpisodeStatistics) when the env has it: `rollout.episode_returns/episode_lengths/episodes`.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps={num_steps} must be >= 1")
    state = RolloutState() if state is None else state
    n = len(envs)
    device = next(policy.parameters()).device
    if state.generator is None and state.seed is not None:
        state.generator = torch.Generator(device=device)
        state.generator.manual_seed(int(state.seed))
    generator = policy.generator if policy.generator is not None else state.generator
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
    continuous = policy.continuous
    obs_buf = np.empty((num_steps, n, *policy.obs_shape), np.uint8)
    act_buf = np.empty((num_steps, n, policy.action_dim) if continuous else (num_steps, n),
                       np.float32 if continuous else np.int64)
    logp_buf = np.empty((num_steps, n), np.float32)
    val_buf = np.empty((num_steps, n), np.float32)
    rew_buf = np.empty((num_steps, n), np.float32)
    term_buf = np.zeros((num_steps, n), bool)
    trunc_buf = np.zeros((num_steps, n), bool)
    final_buf = np.zeros((num_steps, n), np.float32)
    ep_returns: list[float] = []
    ep_lengths: list[int] = []

    obs = state.obs
    for t in range(num_steps):
        if t == 0 or (sde_sample_freq > 0 and t % sde_sample_freq == 0):
            policy.reset_noise(n, generator)
        obs_buf[t] = obs
        actions, extras = policy.sample(torch.as_tensor(obs, device=device), True, generator)
        actions_np = actions.cpu().numpy()
        act_buf[t] = extras["raw_action"].cpu().numpy()
        logp_buf[t] = extras["logprob"].cpu().numpy()
        val_buf[t] = extras["value"].cpu().numpy()
        next_obs = np.empty_like(obs)
        final_obs: dict[int, np.ndarray] = {}
        for i, env in enumerate(envs):
            o, r, terminated, truncated, info = env.step(actions_np[i])
            rew_buf[t, i] = r
            term_buf[t, i] = terminated
            trunc_buf[t, i] = truncated and not terminated
            if terminated or truncated:
                stats = _episode_stats(info)
                if stats is not None:
                    ep_returns.append(stats[0])
                    ep_lengths.append(stats[1])
                if trunc_buf[t, i]:
                    final_obs[i] = np.asarray(o)
                o, _ = env.reset()
            next_obs[i] = o
        if final_obs:
            idx = sorted(final_obs)
            values = policy.predict_value(torch.as_tensor(np.stack([final_obs[i] for i in idx]), device=device))
            final_buf[t, idx] = values.cpu().numpy()
        obs = next_obs
    state.obs = obs
    state.steps += num_steps * n
    next_value = policy.predict_value(torch.as_tensor(obs, device=device)).cpu().numpy().astype(np.float32)
    rollout = Rollout(
        obs=obs_buf, actions=act_buf, logprob=logp_buf, value=val_buf, rewards=rew_buf,
        terminated=term_buf, truncated=trunc_buf, final_values=final_buf, next_value=next_value,
        episode_returns=np.asarray(ep_returns, np.float32), episode_lengths=np.asarray(ep_lengths, np.int64),
        policy_version=int(policy_version),
    )
    return rollout, state


# ----------------------------------------------------------------------------------------------------
# GAE and reward normalisation
# ----------------------------------------------------------------------------------------------------
def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    next_value: np.ndarray,
    final_values: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(lambda) advantages and lambda-returns for [T, N] arrays (Schulman et al. 2016).

    Step t bootstraps from 0 if terminated[t], from final_values[t] if truncated[t] (the time limit is not
    part of the MDP, so the cut episode's value continues), else from values[t+1] (next_value at t=T-1).
    The advantage recursion stops at either kind of episode end. Returns (advantages, returns) float32.
    """
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    terminated = np.asarray(terminated, bool)
    truncated = np.asarray(truncated, bool) & ~terminated
    num_steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last = np.zeros_like(rewards[0])
    final_values = np.asarray(final_values, np.float64)
    for t in reversed(range(num_steps)):
        following = np.asarray(next_value, np.float64) if t == num_steps - 1 else values[t + 1]
        bootstrap = np.where(terminated[t], 0.0, np.where(truncated[t], final_values[t], following))
        delta = rewards[t] + gamma * bootstrap - values[t]
        continues = ~(terminated[t] | truncated[t])
        last = delta + gamma * lam * continues * last
        advantages[t] = last
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)


class ReturnNormalizer:
    """The reward half of SB3's VecNormalize: divide rewards by the running std of discounted returns.

    Per env column it keeps a running discounted return, updates running mean/var statistics with it each
    step (parallel-variance update, as SB3's RunningMeanStd), and resets it at episode ends.
    """

    def __init__(self, gamma: float, epsilon: float, clip: float):
        self.gamma, self.epsilon, self.clip = gamma, epsilon, clip
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4
        self.returns = np.zeros(0, np.float64)

    def _update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = float(x.mean()), float(x.var()), x.size
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean, self.var, self.count = self.mean + delta * batch_count / total, m2 / total, total

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if self.returns.shape != rewards.shape[1:]:
            self.returns = np.zeros(rewards.shape[1:], np.float64)  # the number of envs changed: restart
        out = np.empty_like(rewards, dtype=np.float32)
        for t in range(rewards.shape[0]):
            self.returns = self.returns * self.gamma + rewards[t]
            self._update(self.returns)
            out[t] = np.clip(rewards[t] / math.sqrt(self.var + self.epsilon), -self.clip, self.clip)
            self.returns[dones[t]] = 0.0
        return out

    @property
    def scale(self) -> float:
        return math.sqrt(self.var + self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count,
                "returns": torch.as_tensor(self.returns, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
        self.returns = state["returns"].cpu().numpy().astype(np.float64)


def explained_variance(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true] (SB3); nan when y_true is constant."""
    var_y = float(np.var(y_true))
    return float("nan") if var_y == 0 else float(1.0 - np.var(y_true - y_pred) / var_y)


# ----------------------------------------------------------------------------------------------------
# Learner
# ----------------------------------------------------------------------------------------------------
class PPOLearner(Learner):
    """PPO with a clipped surrogate, shared NatureCNN actor-critic, GAE, per-minibatch advantage norm."""

    algo = "ppo"

    def __init__(
        self, config: PPOConfig, obs_shape: tuple[int, int, int], action_spec: ActionSpec,
        device: DeviceConfig, seed: int,
    ):
        config.validate()
        check_obs_shape(tuple(obs_shape))
        if action_spec.kind not in ("continuous", "discrete") or action_spec.n < 1:
            raise ConfigError(f"action space {action_spec} is not usable by ppo; allowed: continuous or discrete")
        super().__init__(obs_shape, action_spec, device, seed)
        self.config = config
        # Deterministic init from the seed without touching torch's global RNG.
        with torch.random.fork_rng(devices=[]):  # CPU RNG only; the CUDA RNG is left alone
            torch.default_generator.manual_seed(seed)
            self.policy = PPOPolicy(**self.policy_spec()).to(self.device)
        self.policy.generator = self.generator
        # Fused Adam (CPU and CUDA): one kernel per step instead of several per parameter tensor (~6 ms a
        # minibatch step less on one CPU core for the 1.7M-parameter NatureCNN; benchmarks/learner_speed.py).
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr, eps=config.adam_eps, fused=True)
        self.reward_normalizer = ReturnNormalizer(config.gamma, config.reward_norm_epsilon, config.reward_clip)
        self.schedule_step = 0  # update() calls the lr schedule has advanced by

    def policy_spec(self) -> dict[str, Any]:
        return {
            "obs_shape": tuple(self.obs_shape),
            "action_kind": self.action_spec.kind,
            "action_dim": self.action_spec.n,
            "features_dim": self.config.features_dim,
            "log_std_init": self.config.log_std_init,
            "ortho_init": self.config.ortho_init,
            "channels_last": self.config.channels_last,
            "net_arch_pi": tuple(self.config.net_arch_pi),
            "net_arch_vf": tuple(self.config.net_arch_vf),
            "activation": self.config.activation,
            "use_sde": self.config.use_sde and self.action_spec.kind == "continuous",
        }

    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        return {"policy": self.policy, "optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"schedule_step": self.schedule_step, "reward_normalizer": self.reward_normalizer.state_dict(),
                "config": config_dict(self.config)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.schedule_step = int(state.get("schedule_step", self.num_updates))
        if "reward_normalizer" in state:
            self.reward_normalizer.load_state_dict(state["reward_normalizer"])

    def current_lr(self) -> float:
        cfg = self.config
        if cfg.lr_schedule == "linear":
            return cfg.lr * max(0.0, 1.0 - self.schedule_step / cfg.total_updates)
        return cfg.lr

    # ----- the update -----
    def _snapshot(self) -> dict[str, Any]:
        return {
            "policy": copy.deepcopy(self.policy.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": copy.deepcopy(self.scaler.state_dict()),
            "reward_normalizer": copy.deepcopy(self.reward_normalizer.state_dict()),
            "np_rng": copy.deepcopy(self.np_rng.bit_generator.state),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        self.policy.load_state_dict(snap["policy"])
        self.optimizer.load_state_dict(snap["optimizer"])
        if snap["scaler"]:
            self.scaler.load_state_dict(snap["scaler"])
        self.reward_normalizer.load_state_dict(snap["reward_normalizer"])
        self.np_rng.bit_generator.state = snap["np_rng"]

    @torch.no_grad()
    def _proximal_logprob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Log-probs of the rollout's actions under the policy as it is now, before this update's steps."""
        self.policy.eval()
        chunks = []
        for start in range(0, len(obs), 4 * self.config.minibatch_size):
            end = start + 4 * self.config.minibatch_size
            with self.autocast():
                head, _ = self.policy(obs[start:end])
            chunks.append(self.policy.log_prob_entropy(head, actions[start:end])[0].float())
        return torch.cat(chunks)

    def update(self, batch: Rollout | dict[str, Any]) -> dict[str, float]:
        """One PPO update (n_epochs of minibatch steps) from one rollout; returns metrics as floats.

        On a NaN/inf in the inputs, a loss or a gradient, every module, the optimiser, the reward
        normaliser and the RNG are restored to their state at entry and NonFiniteLossError is raised.
        """
        rollout = batch if isinstance(batch, Rollout) else Rollout(**batch)
        rollout.check(self.obs_shape, self.action_spec)
        for name in ("rewards", "value", "logprob", "final_values", "next_value"):
            if not np.isfinite(getattr(rollout, name)).all():
                raise NonFiniteLossError(f"rollout {name} holds NaN/inf; update skipped, weights unchanged")
        snap = self._snapshot()
        try:
            metrics = self._update(rollout)
        except NonFiniteLossError:
            self._restore(snap)
            raise
        self.num_updates += 1
        self.schedule_step += 1
        return metrics

    def _update(self, rollout: Rollout) -> dict[str, float]:
        cfg = self.config
        dones = rollout.terminated | rollout.truncated
        if cfg.normalize_reward:
            rewards = self.reward_normalizer(rollout.rewards.astype(np.float64), dones)
        else:
            rewards = rollout.rewards
        advantages, returns = compute_gae(
            rewards, rollout.value, rollout.terminated, rollout.truncated, rollout.next_value,
            rollout.final_values, cfg.gamma, cfg.gae_lambda,
        )
        explained_var = explained_variance(rollout.value.reshape(-1), returns.reshape(-1))

        size = rollout.num_steps * rollout.num_envs
        dev = self.device
        obs = self.to_tensor(rollout.obs.reshape(size, *self.obs_shape))
        actions = self.to_tensor(rollout.actions.reshape(size, *rollout.actions.shape[2:]))
        old_logprob = self.to_tensor(rollout.logprob.reshape(size))
        old_values = self.to_tensor(rollout.value.reshape(size))
        adv_all = torch.as_tensor(advantages.reshape(size), device=dev)
        ret_all = torch.as_tensor(returns.reshape(size), device=dev)

        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The policy the ratio is clipped against: the behaviour policy (standard PPO) or, decoupled, this one.
        prox_logprob = self._proximal_logprob(obs, actions) if cfg.decoupled else old_logprob
        is_weight = (prox_logprob - old_logprob).exp().clamp(max=cfg.is_weight_clip) if cfg.decoupled else None
        self.policy.train()
        params = list(self.policy.parameters())
        names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "loss")
        sums = torch.zeros(len(names), device=dev, dtype=torch.float64)  # summed on device: no per-step sync
        steps = 0
        epochs_done = 0
        early_stop = False
        last_kl = 0.0
        for _epoch in range(cfg.n_epochs):
            order = self.np_rng.permutation(size)
            for start in range(0, size, cfg.minibatch_size):
                idx = torch.as_tensor(order[start:start + cfg.minibatch_size], device=dev)
                with self.autocast():
                    head, values = self.policy(obs[idx])
                logprob, entropy = self.policy.log_prob_entropy(head, actions[idx])
                values = values.float()
                adv = adv_all[idx]
                if cfg.normalize_advantage and len(idx) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                log_ratio = logprob - prox_logprob[idx]
                ratio = log_ratio.exp()
                surrogate = torch.min(adv * ratio, adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
                policy_loss = -(surrogate if is_weight is None else is_weight[idx] * surrogate).mean()
                if cfg.clip_range_vf is None:
                    values_pred = values
                else:
                    old_v = old_values[idx]
                    values_pred = old_v + (values - old_v).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
                value_loss = F.mse_loss(values_pred, ret_all[idx])
                entropy_mean = entropy.mean()
                loss = policy_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * value_loss
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean()
                if cfg.target_kl is not None:
                    last_kl = approx_kl.item()
                    if last_kl > 1.5 * cfg.target_kl:
                        early_stop = True  # SB3: stop before stepping on this minibatch
                        break
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                checked = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean}
                if not self.scaler.is_enabled():  # fp16 overflow is the scaler's business (it skips the step)
                    checked["grad_norm"] = grad_norm
                # One host sync per step: a single finiteness test, then name the culprit if it fails.
                if not bool(torch.isfinite(torch.stack([v.detach().float() for v in checked.values()])).all()):
                    check_finite(checked)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                steps += 1
                sums += torch.stack([policy_loss, value_loss, entropy_mean, approx_kl, clip_fraction, grad_norm,
                                     loss]).detach().double()
            epochs_done += 1
            if early_stop:
                break
        self.policy.eval()

        means = (sums / max(steps, 1)).tolist()
        metrics = {key: (value if steps else float("nan")) for key, value in zip(names, means)}
        if cfg.target_kl is None and steps:
            last_kl = float(approx_kl.item())
        metrics.update({
            "explained_variance": explained_var,
            "lr": lr,
            "gradient_steps": float(steps),
            "epochs": float(epochs_done),
            "early_stopped": float(early_stop),
            "last_approx_kl": last_kl,
            "value_mean": float(rollout.value.mean()),
            "reward_mean": float(rollout.rewards.mean()),
            "advantage_std": float(advantages.std()),
        })
        if cfg.normalize_reward:
            metrics["reward_scale"] = self.reward_normalizer.scale
        if is_weight is not None:  # how stale the rollout was: KL(behaviour || proximal) and the weights it gave
            log_w = (prox_logprob - old_logprob).double()
            metrics["behaviour_kl"] = float(((log_w.exp() - 1) - log_w).mean())
            metrics["is_weight_mean"] = float(is_weight.mean())
        if self.policy.continuous:
            metrics["std"] = self.policy.action_std(head)  # of the last minibatch: the exploration scale
        return metrics


__all__ = ["PPOConfig", "PPOLearner", "PPOPolicy", "Rollout", "RolloutState", "collect_rollout", "compute_gae",
           "concat_rollouts", "from_sb3_state_dict", "to_sb3_state_dict"]
