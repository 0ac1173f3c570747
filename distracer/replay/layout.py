"""How one run's replay stores a transition: worked out once from the env and the algorithm's config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distracer.replay.sizing import capacity_from_budget

if TYPE_CHECKING:
    from distracer.algos import ActionSpec
    from distracer.config import TrainConfig


@dataclass(frozen=True)
class ReplayLayout:
    """The `FrameReplay` arguments of a run's shards (all but capacity and seed)."""

    frame_shape: tuple[int, ...]
    """One frame as stored: (H, W) grayscale or (H, W, 3) colour (observations are stacks of these)."""
    action_shape: tuple[int, ...]
    """One action: () for a discrete index, (n,) for continuous controls."""
    action_dtype: np.dtype
    """int64 (discrete) or float32 (continuous)."""
    frame_stack: int
    """Frames per observation, rebuilt at sample time."""
    n_step: int
    """Steps in the n-step return built at sample time."""
    gamma: float
    """Discount folded into each sample's `discount`."""
    compress: bool
    """lz4-compressed frames."""

    @classmethod
    def for_run(cls, config: TrainConfig, obs_shape: tuple[int, int, int], action_spec: ActionSpec) -> ReplayLayout:
        """From the observation shape (C, H, W) the env gives and the off-policy algorithm's config."""
        frame = tuple(obs_shape[1:]) if config.env.grayscale else (*obs_shape[1:], 3)
        algo = config.algo_config
        return cls(frame, action_spec.shape, action_spec.dtype, config.env.frame_stack, algo.n_step, algo.gamma,
                   config.replay.compress)

    def capacity(self, ram_budget: str | int, num_shards: int, batch_size: int) -> int:
        """Transitions per shard within `ram_budget` over all shards (ConfigError when impossible)."""
        return capacity_from_budget(ram_budget, num_shards, self.frame_shape, self.compress, batch_size=batch_size,
                                    action_shape=self.action_shape, action_dtype=self.action_dtype)

    def replay_args(self) -> dict[str, Any]:
        """Keyword arguments of `FrameReplay` (and `ReplayShardImpl`), with capacity and seed to add."""
        return asdict(self)
