"""`PPOLearner.update`: the whole PPO update (clipped surrogate, optional decoupled objective, value loss,
entropy, target_kl early stop) on one round of rollouts."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distracer.algos.base import (
    ActionSpec,
    DeviceConfig,
    Learner,
    NonFiniteLossError,
    check_finite,
    config_dict,
)
from distracer.algos.nets import check_obs_shape
from distracer.algos.ppo.advantages import ReturnNormalizer, compute_gae, explained_variance
from distracer.algos.ppo.config import PPOConfig
from distracer.algos.ppo.policy import PPOPolicy
from distracer.algos.ppo.rollout import Rollout
from distracer.envs.wrappers import ACCEL, STEER
from distracer.errors import ConfigError


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
        self._init_accel_log_std()
        self.policy.generator = self.generator
        # Fused Adam (CPU and CUDA): one kernel per step instead of several per parameter tensor (~6 ms a
        # minibatch step less on one CPU core for the 1.7M-parameter NatureCNN; benchmarks/learner_speed.py).
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=config.adam_eps,
                                          fused=True)
        self.reward_normalizer = ReturnNormalizer(config.gamma, config.reward_norm_epsilon, config.reward_clip)
        self.schedule_step = 0  # update() calls the lr schedule has advanced by

    def _init_accel_log_std(self) -> None:
        """`ppo.accel_log_std_init`: the accel control's column of `log_std` (shape (2,), or gSDE's (L, 2)).
        Only the learner's fresh policy: workers and checkpoints take the parameter's values, not the spec."""
        value = self.config.accel_log_std_init
        if value is None or not self.policy.continuous:
            return
        if self.action_spec.n != 2:
            raise ConfigError(f"ppo.accel_log_std_init needs 2-D [steer, accel] actions, not {self.action_spec.n}-D")
        with torch.no_grad():
            self.policy.log_std[..., ACCEL] = value

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
            "sde_unit_latent": self.config.sde_unit_latent and self.action_spec.kind == "continuous",
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

    def schedule_position(self, budget_used: float = 0.0) -> float:
        """How far along the schedules are, 0 to 1: updates done / `total_updates`, or under
        `lr_horizon='budget'` the larger of that and `budget_used` (the fraction of the run's time budget spent;
        the runtime passes elapsed / max_minutes)."""
        cfg = self.config
        position = self.schedule_step / cfg.total_updates if cfg.total_updates else 0.0
        if cfg.lr_horizon == "budget":
            position = max(position, budget_used)
        return min(1.0, position)

    def current_lr(self, budget_used: float = 0.0) -> float:
        """The learning rate of the next update (`budget_used` as in `schedule_position`)."""
        cfg = self.config
        if cfg.lr_schedule == "linear":
            return cfg.learning_rate * (1.0 - self.schedule_position(budget_used))
        return cfg.learning_rate

    def log_std_ceiling(self, budget_used: float = 0.0) -> float | None:
        """`ppo.log_std_final`'s ceiling on log_std after the next update: linear in the schedule's position from
        `log_std_init` to `log_std_final`; None when off."""
        cfg = self.config
        if cfg.log_std_final is None:
            return None
        return cfg.log_std_init + (cfg.log_std_final - cfg.log_std_init) * self.schedule_position(budget_used)

    def _apply_log_std_ceiling(self, budget_used: float) -> None:
        ceiling = self.log_std_ceiling(budget_used)
        if ceiling is not None and self.policy.continuous:
            with torch.no_grad():
                self.policy.log_std.clamp_(max=ceiling)

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

    def update(self, batch: Rollout | dict[str, Any], budget_used: float = 0.0) -> dict[str, float]:
        """One PPO update (n_epochs of minibatch steps) from one rollout; returns metrics as floats.
        `budget_used` as in `current_lr`.

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
            metrics = self._update(rollout, self.current_lr(budget_used))
        except NonFiniteLossError:
            self._restore(snap)
            raise
        self.num_updates += 1
        self.schedule_step += 1
        self._apply_log_std_ceiling(budget_used)
        return metrics

    def _update(self, rollout: Rollout, lr: float) -> dict[str, float]:
        cfg = self.config
        data = self._prepare(rollout)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.policy.train()
        sums = torch.zeros(len(LOSS_METRICS), device=self.device, dtype=torch.float64)  # on device: no per-step sync
        steps = epochs_done = 0
        early_stop = False
        last_kl = 0.0
        for _epoch in range(cfg.n_epochs):
            order = self.np_rng.permutation(data.size)
            for start in range(0, data.size, cfg.minibatch_size):
                idx = torch.as_tensor(order[start:start + cfg.minibatch_size], device=self.device)
                losses, head = self._minibatch_losses(data, idx)
                if cfg.target_kl is not None:
                    last_kl = losses["approx_kl"].item()
                    if last_kl > 1.5 * cfg.target_kl:
                        early_stop = True  # SB3: stop before stepping on this minibatch
                        break
                losses["grad_norm"] = self._step(losses)
                steps += 1
                sums += torch.stack([losses[name] for name in LOSS_METRICS]).detach().double()
            epochs_done += 1
            if early_stop:
                break
        self.policy.eval()

        means = (sums / max(steps, 1)).tolist()
        metrics = {key: (value if steps else float("nan")) for key, value in zip(LOSS_METRICS, means)}
        if cfg.target_kl is None and steps:
            last_kl = float(losses["approx_kl"].item())
        metrics.update({
            "explained_variance": data.explained_var,
            "learning_rate": lr,
            "gradient_steps": float(steps),
            "epochs": float(epochs_done),
            "early_stopped": float(early_stop),
            "last_approx_kl": last_kl,
            "value_mean": float(rollout.value.mean()),
            "reward_mean": float(rollout.rewards.mean()),
            "advantage_std": float(data.advantages.std()),
        })
        metrics.update(self._staleness_metrics(data))
        if cfg.normalize_reward:
            metrics["reward_scale"] = self.reward_normalizer.scale
        if self.policy.continuous:
            stds = self.policy.action_stds(head)  # of the last minibatch: the exploration scale
            metrics["std"] = float(stds.mean())
            if self.action_spec.n == 2:  # [steer, accel]: each control's noise, which accel_log_std_init splits
                metrics["std_steer"], metrics["std_accel"] = float(stds[STEER]), float(stds[ACCEL])
        return metrics

    def _prepare(self, rollout: Rollout) -> _UpdateData:
        """Normalised rewards, GAE advantages and returns, the rollout flattened to tensors on the device, and
        the log-probs the ratio is clipped against: the behaviour policy's (standard PPO) or, decoupled, the
        current policy's (Hilton et al. 2022, "Batch size-invariance for policy optimization")."""
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
        size = rollout.num_steps * rollout.num_envs
        obs = self.to_tensor(rollout.obs.reshape(size, *self.obs_shape))
        actions = self.to_tensor(rollout.actions.reshape(size, *rollout.actions.shape[2:]))
        old_logprob = self.to_tensor(rollout.logprob.reshape(size))
        prox_logprob = self._proximal_logprob(obs, actions) if cfg.decoupled else old_logprob
        is_weight = (prox_logprob - old_logprob).exp().clamp(max=cfg.is_weight_clip) if cfg.decoupled else None
        return _UpdateData(
            size=size, obs=obs, actions=actions, old_logprob=old_logprob,
            old_values=self.to_tensor(rollout.value.reshape(size)),
            advantages_all=torch.as_tensor(advantages.reshape(size), device=self.device),
            returns=torch.as_tensor(returns.reshape(size), device=self.device),
            prox_logprob=prox_logprob, is_weight=is_weight, advantages=advantages,
            explained_var=explained_variance(rollout.value.reshape(-1), returns.reshape(-1)),
        )

    def _minibatch_losses(self, data: _UpdateData, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """The clipped surrogate, value and entropy terms of one minibatch (SB3's PPO.train, term by term), with
        approx_kl and clip_fraction; and the policy head's output (for the std metric)."""
        cfg = self.config
        with self.autocast():
            head, values = self.policy(data.obs[idx])
        logprob, entropy = self.policy.log_prob_entropy(head, data.actions[idx])
        values = values.float()
        adv = data.advantages_all[idx]
        if cfg.normalize_advantage and len(idx) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        log_ratio = logprob - data.prox_logprob[idx]
        ratio = log_ratio.exp()
        surrogate = torch.min(adv * ratio, adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
        policy_loss = -(surrogate if data.is_weight is None else data.is_weight[idx] * surrogate).mean()
        if cfg.clip_range_vf is None:
            values_pred = values
        else:
            old_v = data.old_values[idx]
            values_pred = old_v + (values - old_v).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
        value_loss = F.mse_loss(values_pred, data.returns[idx])
        entropy_mean = entropy.mean()
        loss = policy_loss - cfg.ent_coef * entropy_mean + cfg.vf_coef * value_loss
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clip_fraction = ((ratio - 1).abs() > cfg.clip_range).float().mean()
        return {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean,
                "approx_kl": approx_kl, "clip_fraction": clip_fraction, "loss": loss}, head

    def _step(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step on `losses["loss"]` (grad-norm clipped, AMP-scaled); the grad norm. Raises
        NonFiniteLossError (naming the term) on a NaN/inf loss or gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        checked = {name: losses[name] for name in ("policy_loss", "value_loss", "entropy")}
        if not self.scaler.is_enabled():  # fp16 overflow is the scaler's business (it skips the step)
            checked["grad_norm"] = grad_norm
        # One host sync per step: a single finiteness test, then name the culprit if it fails.
        if not bool(torch.isfinite(torch.stack([v.detach().float() for v in checked.values()])).all()):
            check_finite(checked)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return grad_norm

    @staticmethod
    def _staleness_metrics(data: _UpdateData) -> dict[str, float]:
        """Decoupled only: how stale the rollout was, KL(behaviour || proximal), and the weights it gave."""
        if data.is_weight is None:
            return {}
        log_w = (data.prox_logprob - data.old_logprob).double()
        return {"behaviour_kl": float(((log_w.exp() - 1) - log_w).mean()),
                "is_weight_mean": float(data.is_weight.mean())}


LOSS_METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "loss")
"""Per-minibatch terms averaged over an update's gradient steps."""


@dataclass
class _UpdateData:
    """One rollout ready for an update: flat tensors of `size` = num_steps x num_envs samples on the device."""

    size: int
    obs: torch.Tensor
    actions: torch.Tensor
    old_logprob: torch.Tensor
    old_values: torch.Tensor
    advantages_all: torch.Tensor
    returns: torch.Tensor
    prox_logprob: torch.Tensor
    is_weight: torch.Tensor | None
    advantages: np.ndarray
    """float [T, N]: the GAE advantages before per-minibatch normalisation (for the advantage_std metric)."""
    explained_var: float
