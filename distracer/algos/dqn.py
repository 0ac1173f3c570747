"""DQN for the 5 discrete CarRacing actions (left, right, gas, brake, no-op), read top to bottom.

Modelled on CleanRL's `dqn_atari.py` and Stable-Baselines3's `DQN`, with the improvements the
distributed setting wants:

- Double DQN targets (van Hasselt et al. 2016): the online net picks the next action, the target
  net values it. Huber (smooth-L1) loss and gradient-norm clipping at 10, as SB3.
- n-step returns come precomputed from the replay: `batch["reward"]` is the discounted n-step sum
  and `batch["discount"]` is gamma^m * (1 - terminated), so target = reward + discount * Q'(s', a*).
  `gamma` and `n_step` live here only so the replay can read them.
- Epsilon-greedy exploration on the workers: one linearly decayed epsilon (`epsilon_at`, as SB3 and
  CleanRL), or a fixed epsilon per worker as in Ape-X (`apex_epsilons`). Workers hold only the
  `DQNPolicy`, so epsilon is a settable attribute on it and its randomness comes from its own
  seeded torch generator (reproducible, and checkpointed with the learner).
- The Q network has SB3's `QNetwork` layout for `CnnPolicy` (`features_extractor` = NatureCNN, then
  `q_net` = Sequential(Linear(512, n_actions))), so `to_sb3_state_dict` is a plain state-dict copy
  into an SB3 `DQN("CnnPolicy", ...)`. The optional dueling head (Wang et al. 2016) has no SB3
  counterpart and cannot be exported.
- Optional DrQ random-shift augmentation of obs and next_obs (Kostrikov et al. 2020), off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distracer.algos.augment import RandomShiftsAug
from distracer.algos.base import ActionSpec, DeviceConfig, Learner, Policy, check_finite
from distracer.algos.nets import NatureCNN, check_obs_shape, polyak_update
from distracer.errors import ConfigError


@dataclass
class DQNConfig:
    RENAMED: ClassVar[dict[str, str]] = {"updates_per_step": "replay_ratio"}
    """Old names (still loaded, with a note) -> current ones."""

    learning_rate: float = 1e-4
    """Adam learning rate (SB3 and CleanRL default; RL Zoo's Atari DQN uses it too; RL Zoo has no CarRacing DQN)."""
    batch_size: int = 32
    """Transitions per gradient update (SB3 default)."""
    gamma: float = 0.99
    """Discount factor; the replay folds gamma^m into batch['discount']."""
    n_step: int = 3
    """Steps in the n-step return the replay computes (3 as Rainbow/Ape-X; 1 gives SB3's one-step DQN)."""
    double_q: bool = True
    """Double DQN: the online net picks the next action, the target net values it. False: max over the target net."""
    dueling: bool = False
    """Dueling head (value + mean-centred advantage streams). Not exportable to SB3."""
    features_dim: int = 512
    """Output features of the NatureCNN encoder (512 as SB3's CnnPolicy)."""
    target_update_interval: int = 2500
    """Gradient updates between target-network updates. SB3 counts 10,000 env steps at train_freq 4 = 2,500 updates."""
    tau: float = 1.0
    """Target update coefficient: 1.0 is a hard copy (SB3 default); < 1 is a Polyak update (use with interval 1)."""
    max_grad_norm: float = 10.0
    """Clip the gradient's global L2 norm to this (SB3 default)."""
    replay_ratio: float = 0.25
    """Replay ratio: gradient updates per environment step (SB3's train_freq 4, gradient_steps 1)."""
    learning_starts: int = 10_000
    """Environment steps collected before the first update (about 10 CarRacing episodes of varied tracks)."""
    eps_start: float = 1.0
    """Epsilon at env step 0 (SB3 exploration_initial_eps)."""
    eps_end: float = 0.05
    """Epsilon after the decay (SB3 exploration_final_eps)."""
    exploration_fraction: float = 0.1
    """Fraction of `exploration_horizon` over which epsilon decays linearly (SB3 default)."""
    exploration_horizon: int = 0
    """Env steps the fraction refers to; 0 = the run's total_env_steps (1M for a learner built outside a run)."""
    eps_decay_steps: int = 0
    """If > 0, decay epsilon over exactly this many env steps instead of fraction * horizon."""
    per_worker_epsilon: bool = False
    """Ape-X exploration: worker i keeps a fixed epsilon apex_base^(1 + i/(N-1) * apex_alpha) instead of the decay."""
    apex_base: float = 0.4
    """Ape-X base epsilon (Horgan et al. 2018)."""
    apex_alpha: float = 7.0
    """Ape-X exponent spread across workers."""
    augment_pad: int = 0
    """DrQ random-shift padding in pixels applied to obs and next_obs in updates; 0 turns augmentation off."""
    channels_last: bool = True
    """Run the CNN in channels-last (NHWC) memory layout: 11-15% faster updates on CPU (oneDNN), the usual
    layout for GPU tensor cores. Workers' policies use the same layout, so their greedy actions match."""

    def validate(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"dqn.{name}={getattr(self, name)!r} is out of range; allowed: {allowed}")

        need(self.learning_rate > 0, "learning_rate", "> 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(0.0 < self.gamma <= 1.0, "gamma", "0 < gamma <= 1")
        need(self.n_step >= 1, "n_step", ">= 1")
        need(self.features_dim >= 1, "features_dim", ">= 1")
        need(self.target_update_interval >= 1, "target_update_interval", ">= 1")
        need(0.0 < self.tau <= 1.0, "tau", "0 < tau <= 1")
        need(self.max_grad_norm > 0, "max_grad_norm", "> 0")
        need(self.replay_ratio > 0, "replay_ratio", "> 0")
        need(self.learning_starts >= 0, "learning_starts", ">= 0")
        need(0.0 <= self.eps_start <= 1.0, "eps_start", "0..1")
        need(0.0 <= self.eps_end <= 1.0, "eps_end", "0..1")
        need(0.0 < self.exploration_fraction <= 1.0, "exploration_fraction", "0 < fraction <= 1")
        need(self.exploration_horizon >= 0, "exploration_horizon", ">= 0 (0 = the run's total_env_steps)")
        need(self.eps_decay_steps >= 0, "eps_decay_steps", ">= 0 (0 = fraction * horizon)")
        need(0.0 < self.apex_base < 1.0, "apex_base", "0 < base < 1")
        need(self.apex_alpha >= 0, "apex_alpha", ">= 0")
        need(self.augment_pad >= 0, "augment_pad", ">= 0")

    def derive(self, total_env_steps: int, num_envs: int) -> None:
        """Epsilon decays over this run's step budget unless `exploration_horizon` is set."""
        if self.exploration_horizon == 0:
            self.exploration_horizon = total_env_steps

    @property
    def decay_steps(self) -> int:
        """Env steps over which epsilon goes from eps_start to eps_end."""
        if self.eps_decay_steps > 0:
            return self.eps_decay_steps
        horizon = self.exploration_horizon or 1_000_000  # a learner built outside a run: SB3's 1M benchmark
        return max(1, int(self.exploration_fraction * horizon))

    def worker_epsilon(self, env_steps: int, worker_index: int, num_workers: int) -> float:
        """Epsilon for rollout worker `worker_index` of `num_workers`: Ape-X fixed or the shared decay.

        Lives on the config because the driver, which hands epsilons to workers, holds no learner.
        """
        if self.per_worker_epsilon:
            return apex_epsilons(num_workers, self.apex_base, self.apex_alpha)[worker_index]
        return epsilon_at(env_steps, self.eps_start, self.eps_end, self.decay_steps)


# ----- exploration schedules (pure functions) -----
def epsilon_at(env_steps: int, eps_start: float = 1.0, eps_end: float = 0.05, decay_steps: int = 100_000) -> float:
    """Linear decay from eps_start at step 0 to eps_end at `decay_steps`, constant after (SB3/CleanRL)."""
    if decay_steps <= 0:
        return float(eps_end)
    progress = min(max(env_steps, 0) / decay_steps, 1.0)
    return float(eps_start + (eps_end - eps_start) * progress)


def apex_epsilons(num_workers: int, base: float = 0.4, alpha: float = 7.0) -> list[float]:
    """Ape-X per-worker epsilons: eps_i = base^(1 + i / (N - 1) * alpha), i = 0..N-1 (one worker gets `base`)."""
    if num_workers < 1:
        raise ConfigError(f"num_workers={num_workers} must be >= 1 for per-worker epsilons")
    if num_workers == 1:
        return [float(base)]
    return [float(base ** (1.0 + i / (num_workers - 1) * alpha)) for i in range(num_workers)]


# ----- networks -----
class QNetwork(nn.Module):
    """NatureCNN features -> Q-values; same module names and shapes as SB3's `QNetwork` for `CnnPolicy`.

    Plain head: `features_extractor` + `q_net` (Sequential(Linear)). Dueling head: `features_extractor`
    + `value` + `advantage`, combined as V + A - mean(A) (no SB3 counterpart).
    """

    def __init__(self, obs_shape: tuple[int, int, int], n_actions: int, features_dim: int = 512, dueling: bool = False,
                 channels_last: bool = False):
        super().__init__()
        self.dueling = dueling
        self.features_extractor = NatureCNN(obs_shape, features_dim, channels_last)
        if dueling:
            self.value = nn.Sequential(nn.Linear(features_dim, 1))
            self.advantage = nn.Sequential(nn.Linear(features_dim, n_actions))
        else:
            self.q_net = nn.Sequential(nn.Linear(features_dim, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.features_extractor(obs)
        if not self.dueling:
            return self.q_net(features)
        advantage = self.advantage(features)
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


class DQNPolicy(Policy):
    """Epsilon-greedy over the Q network; what rollout workers hold.

    `epsilon` is a plain attribute the runtime sets on each worker (from `DQNConfig.worker_epsilon`);
    exploration draws come from the policy's own seeded CPU generator (`set_seed` per worker).
    """

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        n_actions: int,
        features_dim: int = 512,
        dueling: bool = False,
        epsilon: float = 0.0,
        seed: int = 0,
        channels_last: bool = False,
    ):
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.n_actions = int(n_actions)
        self.q_net = QNetwork(self.obs_shape, self.n_actions, features_dim, dueling, channels_last)
        self.generator = torch.Generator()  # CPU: the same draws whatever device the net is on
        self.set_seed(seed)
        self.epsilon = epsilon

    @property
    def epsilon(self) -> float:
        return self._epsilon

    @epsilon.setter
    def epsilon(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"epsilon={value!r} is out of range; allowed: 0..1")
        self._epsilon = value

    def set_seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q_net(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, explore: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        actions = self.q_net(obs).argmax(dim=1)
        if explore:
            # Always draw both, so the RNG stream does not depend on epsilon.
            n = actions.shape[0]
            coin = torch.rand(n, generator=self.generator)
            random_actions = torch.randint(self.n_actions, (n,), generator=self.generator)
            take_random = (coin < self._epsilon).to(actions.device)
            actions = torch.where(take_random, random_actions.to(actions.device), actions)
        return actions.long(), {}


def to_sb3_state_dict(policy: DQNPolicy, full: bool = False) -> dict[str, torch.Tensor]:
    """The Q network as SB3 names it: loads with strict=True into `sb3_dqn.policy.q_net`.

    full=True gives the whole SB3 `DQNPolicy` state (`q_net.*` and `q_net_target.*`, the target a copy of
    the online net), for `sb3_dqn.policy.load_state_dict`. Dueling heads have no SB3 equivalent.
    """
    if policy.q_net.dueling:
        raise ConfigError("dqn.dueling=True cannot be exported to SB3 (its QNetwork has no dueling head)")
    state = {k: v.detach().cpu().clone() for k, v in policy.q_net.state_dict().items()}
    if not full:
        return state
    return {f"{prefix}.{k}": v.clone() for prefix in ("q_net", "q_net_target") for k, v in state.items()}


# ----- learner -----
class DQNLearner(Learner):
    algo = "dqn"

    def __init__(
        self,
        config: DQNConfig,
        obs_shape: tuple[int, int, int],
        action_spec: ActionSpec,
        device: DeviceConfig,
        seed: int,
    ):
        config.validate()
        if action_spec.kind != "discrete":
            raise ConfigError("DQN needs discrete actions; set env.action_space=discrete")
        if action_spec.n < 2:
            raise ConfigError(f"DQN needs at least 2 discrete actions, got {action_spec.n}")
        check_obs_shape(obs_shape)
        super().__init__(obs_shape, action_spec, device, seed)
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global RNG
            torch.manual_seed(seed)
            self.policy = DQNPolicy(
                self.obs_shape, action_spec.n, config.features_dim, config.dueling, config.eps_start, seed,
                config.channels_last,
            ).to(self.device)
            self.q_target = QNetwork(
                self.obs_shape, action_spec.n, config.features_dim, config.dueling, config.channels_last
            )
        self.q_net = self.policy.q_net
        self.q_target.to(self.device)
        self.q_target.load_state_dict(self.q_net.state_dict())
        self.q_target.requires_grad_(False)
        # Fused Adam (CPU and CUDA): one kernel per step instead of several per parameter tensor (~6 ms an update
        # less on one CPU core for the 1.7M-parameter NatureCNN; benchmarks/learner_speed.py).
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=config.learning_rate, fused=True)
        self.augment = RandomShiftsAug(config.augment_pad)

    # ----- learning -----
    def _check_batch(self, batch: dict[str, np.ndarray]) -> None:
        for key in ("obs", "next_obs"):
            shape = tuple(np.shape(batch[key]))[1:]
            if shape != self.obs_shape:
                raise ConfigError(f"batch {key} shape {shape} does not match the learner's obs shape {self.obs_shape}")

    def td_target(self, reward: torch.Tensor, discount: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """reward + discount * Q_target(s', a*), a* = argmax_a Q_online(s', a) (double) or of Q_target."""
        with torch.no_grad(), self.autocast():
            next_q_target = self.q_target(next_obs).float()
            if self.config.double_q:
                next_action = self.q_net(next_obs).float().argmax(dim=1, keepdim=True)
            else:
                next_action = next_q_target.argmax(dim=1, keepdim=True)
            next_value = next_q_target.gather(1, next_action).squeeze(1)
        return reward + discount * next_value

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        self._check_batch(batch)
        obs = self.to_tensor(batch["obs"])
        next_obs = self.to_tensor(batch["next_obs"])
        action = self.to_tensor(batch["action"]).long().reshape(-1, 1)
        reward = self.to_tensor(batch["reward"]).float().reshape(-1)
        discount = self.to_tensor(batch["discount"]).float().reshape(-1)
        if self.config.augment_pad > 0:
            obs = self.augment(obs, self.generator)
            next_obs = self.augment(next_obs, self.generator)

        target = self.td_target(reward, discount, next_obs)
        with self.autocast():
            q_values = self.q_net(obs).float()
        q_taken = q_values.gather(1, action).squeeze(1)
        loss = F.smooth_l1_loss(q_taken, target)
        # NaN/inf in rewards or the nets shows in the loss: refuse before touching grads or the optimiser.
        check_finite({"q_loss": loss.detach()})

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.q_net.parameters(), self.config.max_grad_norm)
        if not self.scaler.is_enabled():
            # With fp16 an inf grad norm is a scale overflow: the scaler skips that step and lowers its scale.
            check_finite({"grad_norm": grad_norm.detach()})
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.num_updates += 1

        target_updated = self.num_updates % self.config.target_update_interval == 0
        if target_updated:
            self.update_target()
        return {
            "q_loss": loss.item(),
            "q_mean": q_taken.detach().mean().item(),
            "q_max_mean": q_values.detach().max(dim=1).values.mean().item(),
            "target_mean": target.mean().item(),
            "grad_norm": grad_norm.item(),
            "target_updated": float(target_updated),
        }

    @torch.no_grad()
    def update_target(self) -> None:
        """Hard copy (tau = 1) or Polyak step of the online net into the target net."""
        if self.config.tau >= 1.0:
            self.q_target.load_state_dict(self.q_net.state_dict())
        else:
            polyak_update(self.q_net, self.q_target, self.config.tau)

    # ----- weights, checkpoints -----
    def policy_spec(self) -> dict[str, Any]:
        return {
            "obs_shape": tuple(self.obs_shape),
            "n_actions": int(self.action_spec.n),
            "features_dim": int(self.config.features_dim),
            "dueling": bool(self.config.dueling),
            "channels_last": bool(self.config.channels_last),
        }

    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        return {"policy": self.policy, "q_target": self.q_target, "optimizer": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        # The learner's policy never explores (workers get their epsilon from `DQNConfig.worker_epsilon`), so
        # no epsilon is saved; checkpoints of earlier versions carry one, which is ignored.
        return {"policy_rng": self.policy.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "policy_rng" in state:
            self.policy.generator.set_state(state["policy_rng"].cpu())
