"""PPO's hyperparameters: `PPOConfig`, every field documented (defaults: RL Zoo's CarRacing-v3 PPO)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from distracer.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
LR_SCHEDULES = ("constant", "linear")
LR_HORIZONS = ("steps", "budget")


def check_noise(use_sde: bool, sde_unit_latent: bool) -> None:
    """The exploration-noise options that go together, checked where a config is validated and where a policy is
    built from weights. Raises ConfigError naming the setting to change. (With discrete actions the learner builds
    its policy without gSDE, so the config does not check `use_sde` against the action space; the policy does.)"""
    if sde_unit_latent and not use_sde:
        raise ConfigError("ppo.sde_unit_latent=true needs ppo.use_sde=true")


@dataclass
class PPOConfig:
    """PPO hyperparameters. Defaults are RL Zoo's tuned CarRacing-v3 PPO (rl-baselines3-zoo hyperparams/ppo.yml:
    8 envs x 512 steps, minibatch 128, lr 1e-4 decaying linearly, no entropy bonus, [256] GELU heads, gSDE with
    log_std -2, no orthogonal init), which learns CarRacing where SB3's generic defaults do not (docs/RESULTS.md)."""

    RENAMED: ClassVar[dict[str, str]] = {"lr": "learning_rate"}
    """Old names (still loaded, with a note) -> the names shared with the other algorithms and SB3."""

    num_envs: int = 8
    """Environments stepped in parallel across all rollout workers; one rollout holds num_steps * num_envs
    transitions (SB3 `n_envs`). The seed project found 8 clearly better than 4 on CarRacing."""
    num_steps: int = 512
    """Steps per environment per rollout (SB3 `n_steps`, CleanRL `num_steps`)."""
    n_epochs: int = 10
    """Passes over each rollout, in shuffled minibatches."""
    minibatch_size: int = 128
    """Transitions per gradient step (SB3 `batch_size`). A last, smaller minibatch takes the remainder."""
    learning_rate: float = 1e-4
    """Adam learning rate (at the start of the schedule)."""
    lr_schedule: str = "linear"
    """'constant', or 'linear': decays to 0 over `total_updates` rollouts (lr * (1 - k / total_updates) at
    update k, as CleanRL's anneal_lr); the schedule's position is checkpointed."""
    total_updates: int = 0
    """Horizon of the linear schedule, in update() calls (rollouts); the runtime derives it from its step
    budget with `PPOConfig.updates_for(total_env_steps)`. Unused by 'constant'."""
    lr_horizon: str = "steps"
    """What the linear schedule decays over. 'steps': `total_updates`. 'budget': the run's whole budget, whichever
    of `total_env_steps` and `max_minutes` ends it first (position max(k / total_updates, elapsed / max_minutes),
    elapsed wall-clock as `max_minutes` counts it, across resumes), so a time-boxed run ends annealed on a
    machine of any speed. Without `max_minutes` the two are the same."""
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
    accel_log_std_init: float | None = None
    """Gaussian noise on 2-D `[steer, accel]` actions: the initial log std of the accel control's noise alone (steering
    keeps `log_std_init`); null = `log_std_init` for both. PPO learns each control's log std from there. Why:
    CarRacing's brake is far stronger than its gas at speed (car_dynamics: a braked wheel loses 15 x brake rad/s a
    frame, all 4 wheels; a driven one gains 500 x gas / (omega + 5), ~5 x gas at 90 rad/s, the 2 rear wheels; gas rises
    at most 0.1 a frame but drops at once), so zero-mean noise on accel near 0 brakes more than it drives: a car
    coasting through a corner slows down with the noise and not by its mean action. The policy learns the corner speeds
    of the noisy car and its mean (the scored controller) takes them too fast (docs/RESULTS.md, "The mean action drives
    worse"). Less accel noise makes the two cars alike while steering keeps exploring. Mind `target_kl`: a mean
    step costs KL in 1/std^2, so at -3 each update reaches the limit 7.3x sooner on accel; at 30 minutes -3.0 scored
    874.3 and 889.1 on two seeds and stalled the third at about one epoch an update (324.9; docs/RESULTS.md). With no
    `target_kl` it scored 817.9 over 3 seeds, and tune_configs/ppo.yaml sets it (the cpu preset's KL stop off)."""
    log_std_final: float | None = None
    """Gaussian noise only (`use_sde: false`): a ceiling on `log_std` that falls linearly from `log_std_init` to
    this over the learning-rate schedule's horizon (the same position: `total_updates`, or the time budget under
    `lr_horizon: budget`), applied to the parameter after every update; null = off (`log_std` free, as SB3).
    Why: the score is the mean action's, but training acts with noise, and CarRacing's controls do not average
    noise out (gas rises at most 0.1 a frame but drops at once; brake >= 0.9 locks the wheels). A 30-minute policy
    driven by its mean took corners faster than with its noise, spun out and stopped where the noisy one finished
    laps: 702.8 against 857.1 on the same 20 tracks (docs/RESULTS.md, "The mean action drives worse").
    A falling ceiling makes the controller trained late the one that is scored."""
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
    sde_unit_latent: bool = False
    """gSDE on the policy latent scaled to unit L2 norm: the noise keeps its state-dependent direction, and its
    size is exp(log_std) alone, which the loss sets. Plain gSDE's std is the latent's norm times exp(log_std),
    and the latent's norm grows as the head trains (0.42 -> 1.00 over a `ppo_gsde` run, doubling the action std while
    PPO lowered log_std; docs/RESULTS.md). Needs `use_sde`. SB3 has no such option: an SB3 export acts the same
    (deterministic), and would explore with SB3's plain gSDE if trained on."""
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
        for name in ("learning_rate", "clip_range", "adam_eps", "max_grad_norm", "reward_clip", "reward_norm_epsilon"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ppo.{name}={getattr(self, name)} must be > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"ppo.lr_schedule={self.lr_schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)}")
        if self.lr_horizon not in LR_HORIZONS:
            raise ConfigError(f"ppo.lr_horizon={self.lr_horizon!r} is unknown; allowed: {', '.join(LR_HORIZONS)}")
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
        if self.accel_log_std_init is not None and not math.isfinite(self.accel_log_std_init):
            raise ConfigError(f"ppo.accel_log_std_init={self.accel_log_std_init} must be finite, or null for "
                              "ppo.log_std_init")
        if self.log_std_final is not None:
            if not math.isfinite(self.log_std_final) or self.log_std_final > self.log_std_init:
                raise ConfigError(f"ppo.log_std_final={self.log_std_final} must be finite and <= ppo.log_std_init="
                                  f"{self.log_std_init} (a ceiling that falls), or null for none")
            if self.use_sde:
                raise ConfigError("ppo.log_std_final needs ppo.use_sde=false: gSDE's std is its latent's norm times "
                                  "exp(log_std), so a ceiling on log_std does not bound it")
        for name in ("net_arch_pi", "net_arch_vf"):
            if any(width < 1 for width in getattr(self, name)):
                raise ConfigError(f"ppo.{name}={list(getattr(self, name))}: every layer width must be >= 1")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"ppo.activation={self.activation!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
        if not self.is_weight_clip > 0:
            raise ConfigError(f"ppo.is_weight_clip={self.is_weight_clip} must be > 0")
        if self.policy_lag not in (0, 1):
            raise ConfigError(f"ppo.policy_lag={self.policy_lag} must be 0 (synchronous) or 1 (overlapped)")
        check_noise(self.use_sde, self.sde_unit_latent)
        if self.sde_sample_freq == 0 or self.sde_sample_freq < -1:
            raise ConfigError(f"ppo.sde_sample_freq={self.sde_sample_freq} must be >= 1, or -1 for once per rollout")

    def derive(self, total_env_steps: int, num_envs: int) -> None:
        """`num_envs` is what the resources run (workers x envs per worker: one source of truth); the learning
        rate schedule's horizon follows the step budget unless `total_updates` is set."""
        self.num_envs = num_envs
        if self.total_updates == 0:
            self.total_updates = self.updates_for(total_env_steps)

    @property
    def rollout_size(self) -> int:
        """Transitions per rollout (per update() call)."""
        return self.num_steps * self.num_envs

    def updates_for(self, total_env_steps: int, num_envs: int | None = None) -> int:
        """How many update() calls a budget of `total_env_steps` agent steps gives (for `total_updates`).

        `num_envs`: the envs actually stepped (workers x envs per worker) when it differs from `self.num_envs`.
        """
        return max(1, total_env_steps // (self.num_steps * (num_envs or self.num_envs)))
