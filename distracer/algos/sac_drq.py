"""Soft Actor-Critic with DrQ image augmentation, for continuous [steer, accel] control from pixels.

Read top to bottom (CleanRL style): the config, the networks, the policy workers run, the learner.

Algorithm (Haarnoja et al. 2018, SAC with automatic temperature; Kostrikov et al. 2020, DrQ;
Yarats et al. 2021, DrQ-v2 for the encoder/actor split):

- One `DrQEncoder` CNN is shared by actor and critic and trained through the critic loss only; the actor
  reads detached features (DrQ-v2's `obs.detach()`), so the actor never moves the representation.
- Twin Q heads on [features, action]; Polyak-averaged targets of both the encoder and the Q heads
  (DrQ's `critic_target` holds its own encoder; `target_encoder=False` is DrQ-v2's variant without one).
- Tanh-squashed diagonal Gaussian policy with log-std squashed into [log_std_min, log_std_max] (DrQ).
- Temperature alpha = exp(log_alpha) tuned towards `target_entropy` (default -action_dim).
- Random shifts (pad 4) applied independently to every obs and next_obs image of the batch, drawn from
  the learner's own generator so a run (and a checkpoint continuation) is reproducible.

Cost per update (what makes it cheaper than SB3's SAC CnnPolicy, which has separate actor and critic
CNNs and back-propagates the actor loss through the critic CNN): the online encoder runs once with
gradients on the augmented obs, and twice without gradients on the augmented next_obs (online encoder
for the next action, as in DrQ, and the target encoder for the target Q; once with `target_encoder=False`).
The actor and temperature losses reuse the detached obs features: no further CNN work. All three losses go
through a single backward pass, and the only host synchronisation is one transfer of the metric vector,
which also serves the NaN/inf check before any optimiser steps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distracer.algos.augment import RandomShiftsAug
from distracer.algos.base import ActionSpec, DeviceConfig, Learner, Policy, check_finite
from distracer.algos.nets import DrQEncoder, check_obs_shape, mlp
from distracer.errors import ConfigError

ACTION_DIM = 2  # [steer, accel]; distracer.envs.wrappers.steer_accel_to_native maps it to CarRacing's 3-D action


@dataclass
class SACConfig:
    """SAC+DrQ hyperparameters (defaults: the seed project's GPU settings; tune_configs/cpu.yaml has the CPU ones)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "feature_dim": "features_dim", "drq_pad": "augment_pad", "target_update_every": "target_update_interval",
        "actor_update_every": "actor_update_interval", "grad_clip": "max_grad_norm", "updates_per_step": "replay_ratio"}
    """Old names (still loaded, with a note) -> the names shared with the other algorithms and SB3."""

    batch_size: int = 256
    """transitions per gradient update (seed: 256)"""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor head (seed: 1e-4)"""
    critic_lr: float = 1e-4
    """Adam learning rate of the encoder and the twin Q heads (seed: 1e-4)"""
    alpha_lr: float = 1e-4
    """Adam learning rate of log(alpha), betas (0.5, 0.999) as in DrQ (seed: 1e-4)"""
    tau: float = 0.01
    """Polyak rate of the target encoder and target Q heads: target <- tau*online + (1-tau)*target (seed: 0.01)"""
    features_dim: int = 64
    """width of the encoder's LayerNorm+tanh feature vector (seed: 64)"""
    hidden_dim: int = 256
    """width of the actor and Q-head MLP layers. 256 as in SB3's SAC (so throughput comparisons differ only
    in the encoder sharing) and ample for 64 features -> 2 actions; DrQ/DrQ-v2 use 1024 for 6-D+ DMC tasks"""
    hidden_depth: int = 2
    """hidden layers in the actor and in each Q head"""
    gamma: float = 0.99
    """discount; the replay folds it into each sample's `discount` (gamma^m * (1 - terminated))"""
    n_step: int = 1
    """n-step returns built by the replay (1 = plain SAC)"""
    replay_ratio: float = 2.0
    """replay ratio the runtime holds: gradient updates per environment step (seed: 2)"""
    learning_starts: int = 1000
    """environment steps collected (with the random-init policy) before the first update"""
    init_alpha: float = 0.1
    """initial entropy temperature (DrQ: 0.1)"""
    target_entropy: float | None = None
    """entropy the temperature steers towards; None = -action_dim (SAC's heuristic)"""
    learn_alpha: bool = True
    """tune alpha automatically; False keeps it at init_alpha"""
    log_std_min: float = -10.0
    """lower bound of the policy's log-std (DrQ: -10)"""
    log_std_max: float = 2.0
    """upper bound of the policy's log-std (DrQ: 2)"""
    actor_update_interval: int = 1
    """update the actor and alpha every this many critic updates (DrQ: 2; 1 keeps the actor in step)"""
    target_update_interval: int = 1
    """Polyak-update the targets every this many updates (DrQ: 2)"""
    augment_pad: int = 4
    """random-shift pad in pixels (seed: 4); 0 turns augmentation off"""
    max_grad_norm: float = 0.0
    """clip each optimiser's gradient global norm to this value; 0 = no clipping (norms are still reported)"""
    target_encoder: bool = True
    """keep a Polyak-averaged target encoder for the target Q (DrQ, SAC-AE). False = DrQ-v2: the target Q heads
    read the online encoder's (no-grad) next_obs features, one CNN pass fewer per update (~20% faster)"""
    channels_last: bool = True
    """run the CNN in channels-last (NHWC) memory layout: faster convolutions on CPU (oneDNN, ~20% here) and
    on GPU tensor cores; workers' policies use the same layout so their actions match the learner's"""

    def derive(self, total_env_steps: int, num_envs: int) -> None:
        """Settings that follow from the run: none for SAC+DrQ."""

    def worker_epsilon(self, env_steps: int, worker_index: int, num_workers: int) -> float | None:
        """None: SAC explores through its own stochastic policy, not epsilon-greedy."""
        return None

    def validate(self) -> None:
        positive_int = ("batch_size", "features_dim", "hidden_dim", "n_step", "actor_update_interval",
                        "target_update_interval")
        for name in positive_int:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"sac_drq.{name}={value!r} must be an integer >= 1")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha", "replay_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"sac_drq.{name}={value!r} must be a finite number > 0")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"sac_drq.tau={self.tau!r} must be in (0, 1]")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"sac_drq.gamma={self.gamma!r} must be in [0, 1]")
        if not isinstance(self.hidden_depth, int) or self.hidden_depth < 0:
            raise ConfigError(f"sac_drq.hidden_depth={self.hidden_depth!r} must be an integer >= 0")
        if not isinstance(self.learning_starts, int) or self.learning_starts < 0:
            raise ConfigError(f"sac_drq.learning_starts={self.learning_starts!r} must be an integer >= 0")
        if not isinstance(self.augment_pad, int) or self.augment_pad < 0:
            raise ConfigError(f"sac_drq.augment_pad={self.augment_pad!r} must be an integer >= 0")
        if not self.log_std_min < self.log_std_max:
            raise ConfigError(
                f"sac_drq.log_std_min={self.log_std_min!r} must be < log_std_max={self.log_std_max!r}"
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ConfigError(f"sac_drq.max_grad_norm={self.max_grad_norm!r} must be >= 0 (0 = off)")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ConfigError(f"sac_drq.target_entropy={self.target_entropy!r} must be finite or None")


# ----------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------

_LOG_2 = math.log(2.0)


class GaussianActor(nn.Module):
    """features -> (mean, log_std) of a diagonal Gaussian; actions are tanh of a sample (DrQ's DiagGaussianActor)."""

    def __init__(self, features_dim: int, action_dim: int, hidden_dim: int, hidden_depth: int,
                 log_std_min: float, log_std_max: float):
        super().__init__()
        self.net = mlp(features_dim, (hidden_dim,) * hidden_depth, 2 * action_dim)
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(features).chunk(2, dim=-1)
        # Squash log_std smoothly into its bounds (DrQ / CleanRL) rather than clamping, so gradients never vanish.
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        return mean, log_std

    def sample(self, features: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised tanh-Gaussian sample and its log-probability (B,), given standard-normal noise."""
        mean, log_std = self(features)
        u = mean + log_std.exp() * noise
        action = torch.tanh(u)
        log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|.
        log_prob = log_prob - (2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
        return action, log_prob


class TwinQ(nn.Module):
    """Two Q MLPs on [features, action], evaluated together as batched matmuls: (B, F), (B, A) -> (2, B).

    Stacking the twins' weights halves the kernel launches of the critic heads (they are tiny next to the
    CNN, so launch overhead, not FLOPs, is their cost on a GPU). Each layer is initialised like nn.Linear.
    """

    def __init__(self, in_dim: int, hidden_dim: int, hidden_depth: int, num_q: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * hidden_depth + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(num_q, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_q, 1, d_out).uniform_(-bound, bound)))
        self.num_q = num_q

    def forward(self, features: torch.Tensor, action: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """Q values (num_q, B). `detach_params` lets a loss (the actor's) differentiate through the heads
        with respect to the action only, leaving the heads' own gradients to the critic loss."""
        x = torch.cat([features, action.to(features.dtype)], dim=-1)
        x = x.unsqueeze(0).expand(self.num_q, -1, -1)
        n_layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                w, b = w.detach(), b.detach()
            x = torch.baddbmm(b, x, w)
            if i < n_layers - 1:
                x = F.relu(x)
        return x.squeeze(-1)


class _LogAlpha(nn.Module):
    """Holds log(alpha) as a parameter so it checkpoints with the modules."""

    def __init__(self, init_alpha: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(math.log(init_alpha), dtype=torch.float32))


# ----------------------------------------------------------------------------------------------------------
# Policy: what rollout workers and evaluation run
# ----------------------------------------------------------------------------------------------------------


class SACPolicy(Policy):
    """Encoder + Gaussian actor. Deterministic acting takes tanh(mean); exploring samples the squashed Gaussian."""

    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int = ACTION_DIM, features_dim: int = 64,
                 hidden_dim: int = 256, hidden_depth: int = 2, log_std_min: float = -10.0, log_std_max: float = 2.0,
                 channels_last: bool = False):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.encoder = DrQEncoder(self.obs_shape, features_dim)
        if channels_last:  # conv weights in NHWC; convolutions then run channels-last whatever the input layout
            self.encoder.to(memory_format=torch.channels_last)
        self.actor = GaussianActor(features_dim, action_dim, hidden_dim, hidden_depth, log_std_min, log_std_max)
        self.generator: torch.Generator | None = None
        """Exploration noise RNG when set (`set_seed`), else torch's global RNG."""

    def set_seed(self, seed: int) -> None:
        """Give exploration its own seeded generator (rollout workers call this after rebuilding the policy)."""
        self.generator = torch.Generator(device=next(self.parameters()).device)
        self.generator.manual_seed(int(seed))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, log_std = self.actor(self.encoder(obs))
        if explore:
            noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=self.generator)
            mean = mean + log_std.exp() * noise
        return torch.tanh(mean).float(), {}


# ----------------------------------------------------------------------------------------------------------
# Learner
# ----------------------------------------------------------------------------------------------------------


class SACDrQLearner(Learner):
    algo = "sac_drq"

    def __init__(self, config: SACConfig, obs_shape: tuple[int, int, int], action_spec: ActionSpec,
                 device: DeviceConfig, seed: int):
        config.validate()
        if action_spec.kind != "continuous" or action_spec.n != ACTION_DIM:
            raise ConfigError(
                f"sac_drq needs a continuous {ACTION_DIM}-D [steer, accel] action space, got {action_spec.kind} "
                f"with n={action_spec.n}; use action_space=continuous (DQN takes the discrete one)"
            )
        check_obs_shape(obs_shape)
        super().__init__(obs_shape, action_spec, device, seed)
        self.config = config
        cfg = config
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick the fastest conv kernels

        # Seeded initialisation (on CPU, then moved) without disturbing the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = SACPolicy(**self.policy_spec())
            critic = TwinQ(cfg.features_dim + ACTION_DIM, cfg.hidden_dim, cfg.hidden_depth)
        self.policy = policy.to(self.device)
        self.encoder = self.policy.encoder
        self.actor = self.policy.actor
        self.critic = critic.to(self.device)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False) if cfg.target_encoder else None
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = _LogAlpha(cfg.init_alpha).to(self.device)
        self.target_entropy = float(-ACTION_DIM if cfg.target_entropy is None else cfg.target_entropy)
        self.aug = RandomShiftsAug(cfg.augment_pad)

        # Fused Adam (CPU and CUDA): one kernel per optimiser instead of several per parameter tensor.
        fused = {"fused": True}
        self.critic_params = list(self.encoder.parameters()) + list(self.critic.parameters())
        self.actor_params = list(self.actor.parameters())
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=cfg.critic_lr, **fused)
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, **fused)
        self.alpha_opt = torch.optim.Adam(self.log_alpha.parameters(), lr=cfg.alpha_lr, betas=(0.5, 0.999), **fused)
        # Flat (online, target) parameter lists for one foreach lerp per target update.
        self._online_for_target = list(self.critic.parameters())
        self._targets = list(self.target_critic.parameters())
        if self.target_encoder is not None:
            self._online_for_target += list(self.encoder.parameters())
            self._targets += list(self.target_encoder.parameters())

    # ----- learning -----
    def _check_batch(self, batch: dict[str, np.ndarray]) -> None:
        missing = {"obs", "action", "reward", "next_obs", "discount"} - set(batch)
        if missing:
            raise ConfigError(f"sac_drq batch lacks {', '.join(sorted(missing))}")
        for key in ("obs", "next_obs"):
            if tuple(batch[key].shape[1:]) != self.obs_shape:
                raise ConfigError(
                    f"sac_drq batch {key} has shape {tuple(batch[key].shape)}, expected (B, *{self.obs_shape})"
                )
        if tuple(batch["action"].shape[1:]) != (ACTION_DIM,):
            raise ConfigError(
                f"sac_drq batch action has shape {tuple(batch['action'].shape)}, expected (B, {ACTION_DIM})"
            )

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape[0], ACTION_DIM, device=self.device, generator=self.generator, dtype=torch.float32)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        self._check_batch(batch)
        cfg = self.config
        update_actor = self.num_updates % cfg.actor_update_interval == 0
        total_loss, values = self._losses(batch, update_actor)
        metrics = self._step(total_loss, values, update_actor)
        if self.num_updates % cfg.target_update_interval == 0:
            with torch.no_grad():
                torch._foreach_lerp_(self._targets, self._online_for_target, cfg.tau)
        self.num_updates += 1
        return metrics

    def _losses(self, batch: dict[str, np.ndarray], update_actor: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The summed critic (and, every actor_update_interval-th update, actor and temperature) losses on
        DrQ-augmented observations, and the metric tensors (no host sync). Kostrikov et al. 2020, DrQ; the
        reference implementation is denisyarats/drq (`DRQAgent.update_critic/update_actor_and_alpha`)."""
        cfg = self.config
        obs = self.to_tensor(batch["obs"])
        next_obs = self.to_tensor(batch["next_obs"])
        action = self.to_tensor(batch["action"]).float()
        reward = self.to_tensor(batch["reward"]).float()
        discount = self.to_tensor(batch["discount"]).float()
        alpha = self.log_alpha.value.detach().exp()

        with self.autocast():
            # One augmentation call for obs and next_obs, every image with its own shift; still uint8 (the
            # encoder scales to [0, 1] itself).
            both = self.aug(torch.cat([obs, next_obs]), self.generator)
            if self.config.channels_last:
                both = both.contiguous(memory_format=torch.channels_last)  # convert as uint8, 4x fewer bytes
            obs_aug, next_aug = both.chunk(2)

            with torch.no_grad():
                next_features = self.encoder(next_aug)
                next_action, next_log_prob = self.actor.sample(next_features, self._noise(next_aug))
                if self.target_encoder is not None:
                    next_features = self.target_encoder(next_aug)
                target_q = self.target_critic(next_features, next_action).min(dim=0).values
                target = reward + discount * (target_q.float() - alpha * next_log_prob.float())

            features = self.encoder(obs_aug)
            q = self.critic(features, action).float()
            critic_loss = (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum()
            total_loss = critic_loss
            values = {"critic_loss": critic_loss, "q_mean": q.detach().mean(), "target_q_mean": target.mean(),
                      "alpha": alpha}
            if not update_actor:
                return total_loss, values
            # The actor sees detached features (encoder trained by the critic only) and differentiates the
            # Q heads w.r.t. its action only, so one backward of the summed losses leaves each parameter
            # the gradient of its own loss.
            pi_action, log_prob = self.actor.sample(features.detach(), self._noise(features))
            log_prob = log_prob.float()
            q_pi = self.critic(features.detach(), pi_action, detach_params=True).min(dim=0).values.float()
            actor_loss = (alpha * log_prob - q_pi).mean()
            if cfg.learn_alpha:
                alpha_loss = -(self.log_alpha.value.exp() * (log_prob.detach() + self.target_entropy)).mean()
            else:
                alpha_loss = torch.zeros((), device=self.device)
        values.update(actor_loss=actor_loss.detach(), alpha_loss=alpha_loss.detach(),
                      entropy=-log_prob.detach().mean())
        return total_loss + actor_loss + alpha_loss, values

    def _step(self, total_loss: torch.Tensor, values: dict[str, torch.Tensor], update_actor: bool) -> dict[str, float]:
        """One backward of the summed losses and the optimiser steps (AMP-scaled, grad-norm clipped); the
        metrics as floats. Raises NonFiniteLossError (weights and optimisers untouched) on a NaN/inf."""
        for opt in (self.critic_opt, self.actor_opt, self.alpha_opt):
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(total_loss).backward()
        values["critic_grad_norm"] = self._grad_norm(self.critic_opt, self.critic_params)
        if update_actor:
            values["actor_grad_norm"] = self._grad_norm(self.actor_opt, self.actor_params)
            if self.config.learn_alpha:
                self.scaler.unscale_(self.alpha_opt)
        # The one host sync of the update: every metric in one transfer; it also decides the NaN check.
        floats = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
        metrics = dict(zip(values, floats))
        # Under fp16 an inf gradient is the grad scaler's business (it skips the step and lowers the scale).
        checked = [k for k in values if not (self.scaler.is_enabled() and k.endswith("grad_norm"))]
        if not all(math.isfinite(metrics[k]) for k in checked):
            for opt in (self.critic_opt, self.actor_opt, self.alpha_opt):
                opt.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # clears the unscale_ bookkeeping; weights and optimisers stay untouched
            check_finite({k: values[k] for k in checked})

        self.scaler.step(self.critic_opt)
        if update_actor:
            self.scaler.step(self.actor_opt)
            if self.config.learn_alpha:
                self.scaler.step(self.alpha_opt)
        self.scaler.update()
        return metrics

    def _grad_norm(self, opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> torch.Tensor:
        """Unscale (fp16) and return the global gradient norm, clipping it when configured; no host sync."""
        self.scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        if self.config.max_grad_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm, foreach=True)
        return torch.nn.utils.get_total_norm(grads, foreach=True)

    @property
    def alpha(self) -> float:
        """Current temperature (host sync; for logging and tests, not the hot path)."""
        return float(self.log_alpha.value.detach().exp())

    # ----- weights for workers -----
    def policy_spec(self) -> dict[str, Any]:
        cfg = self.config
        return {"obs_shape": tuple(self.obs_shape), "action_dim": ACTION_DIM, "features_dim": cfg.features_dim,
                "hidden_dim": cfg.hidden_dim, "hidden_depth": cfg.hidden_depth,
                "log_std_min": float(cfg.log_std_min), "log_std_max": float(cfg.log_std_max),
                "channels_last": bool(cfg.channels_last)}

    # ----- checkpointing -----
    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        modules: dict[str, nn.Module | torch.optim.Optimizer] = {
            "policy": self.policy,  # encoder + actor
            "critic": self.critic,
            "target_critic": self.target_critic,
            "log_alpha": self.log_alpha,
            "critic_opt": self.critic_opt,
            "actor_opt": self.actor_opt,
            "alpha_opt": self.alpha_opt,
        }
        if self.target_encoder is not None:
            modules["target_encoder"] = self.target_encoder
        return modules
