"""Networks shared by the learners.

`NatureCNN` matches Stable-Baselines3's `NatureCNN` layer for layer (same module names and shapes), so
PPO and DQN weights export to SB3 `.zip` files without translation.
"""

from __future__ import annotations

import torch
from torch import nn

from distracer.envs.config import MIN_FRAME_SIZE
from distracer.errors import ConfigError


def check_obs_shape(obs_shape: tuple[int, ...]) -> None:
    """Refuse observation shapes the encoders cannot take, in one line."""
    if len(obs_shape) != 3 or obs_shape[1] != obs_shape[2]:
        raise ConfigError(f"observation shape {tuple(obs_shape)} is not channel-first square (C, H, H)")
    if obs_shape[1] < MIN_FRAME_SIZE:
        raise ConfigError(f"observation shape {tuple(obs_shape)} is too small; frames must be >= {MIN_FRAME_SIZE}")


class NatureCNN(nn.Module):
    """The Atari CNN of Mnih et al. (2015): uint8 (B, C, H, W) in, `features_dim` features out.

    Pixels are scaled to [0, 1] inside the network so uint8 batches travel to the GPU (4x fewer bytes).
    """

    def __init__(self, obs_shape: tuple[int, int, int], features_dim: int = 512, channels_last: bool = False):
        super().__init__()
        check_obs_shape(obs_shape)
        self.features_dim = features_dim
        self.channels_last = channels_last
        self.cnn = nn.Sequential(
            nn.Conv2d(obs_shape[0], 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flatten = self.cnn(torch.zeros(1, *obs_shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())
        if channels_last:
            self.to_channels_last()

    def to_channels_last(self) -> NatureCNN:
        """Store the conv weights NHWC and run the convolutions channels-last: 10-15% faster on CPU (oneDNN;
        benchmarks/learner_speed.py). Flatten still yields C, H, W order, so weights keep SB3's layout.
        Call after any in-place weight initialisation (some initialisers need contiguous weights)."""
        self.channels_last = True
        self.cnn.to(memory_format=torch.channels_last)
        return self

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            obs = obs.contiguous(memory_format=torch.channels_last)  # while uint8: 4x fewer bytes to move
        return self.linear(self.cnn(obs.float() / 255.0))


class DrQEncoder(nn.Module):
    """SAC+DrQ's encoder: the same conv trunk, then Linear -> LayerNorm -> tanh (as in DrQ/DrQ-v2).

    LayerNorm + tanh bound the features, which keeps the critic stable when the encoder is trained
    through the critic only.
    """

    def __init__(self, obs_shape: tuple[int, int, int], features_dim: int = 64):
        super().__init__()
        self.trunk = NatureCNN(obs_shape, features_dim)
        # Replace NatureCNN's ReLU head with DrQ's normalised one.
        n_flatten = self.trunk.linear[0].in_features
        self.trunk.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.LayerNorm(features_dim), nn.Tanh())
        self.features_dim = features_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk(obs)


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """A ReLU MLP; `hidden=()` gives a single linear layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


@torch.no_grad()
def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau * source + (1 - tau) * target, parameter by parameter (buffers copied)."""
    for p, tp in zip(source.parameters(), target.parameters()):
        tp.lerp_(p, tau)
    for b, tb in zip(source.buffers(), target.buffers()):
        tb.copy_(b)
