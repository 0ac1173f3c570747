"""`PPOPolicy`: the actor-critic that rollout workers hold and the learner trains (SB3 CnnPolicy's layout),
with a diagonal Gaussian, gSDE or Categorical action distribution."""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from distracer.algos.base import (
    Policy,
)
from distracer.algos.nets import NatureCNN
from distracer.algos.ppo.config import ACTIVATIONS, check_noise
from distracer.errors import ConfigError


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
    With `sde_unit_latent` the latent in both is first scaled to unit L2 norm (distracer's variant, not SB3's):
    the std is then set by `log_std` alone, not by how large the head's activations grow.

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
        sde_unit_latent: bool = False,
    ):
        super().__init__()
        if action_kind not in ("continuous", "discrete"):
            raise ConfigError(f"action kind {action_kind!r} is unknown; allowed: continuous, discrete")
        if use_sde and action_kind != "continuous":
            raise ConfigError("ppo.use_sde needs continuous actions")
        check_noise(use_sde, sde_unit_latent)
        self.obs_shape = tuple(int(x) for x in obs_shape)
        self.action_kind = action_kind
        self.action_dim = int(action_dim)
        self.use_sde = bool(use_sde)
        self.sde_unit_latent = bool(sde_unit_latent)
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
            variance = (self._noise_features(head.latent) ** 2) @ (std**2)
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

    def _noise_features(self, latent: torch.Tensor) -> torch.Tensor:
        """The features gSDE's noise is linear in (B, L) float32, detached (SB3 learn_features=False)."""
        latent = latent.detach().float()
        if self.sde_unit_latent:
            return latent / latent.norm(dim=-1, keepdim=True).clamp_min(SDE_EPSILON)
        return latent

    def _sde_noise(self, latent: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.exploration_matrices.numel() == 0:
            self.reset_noise(1, generator)
        mats = self.exploration_matrices
        latent = self._noise_features(latent)
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
    def action_stds(self, head: ActionHead) -> torch.Tensor:
        """Std of the continuous action distribution per control (dim,), float32, the batch's mean: the exploration
        scale of each control (their mean is the overall scale, each control having one value per sample)."""
        return self.distribution(head).stddev.detach().mean(0)


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
