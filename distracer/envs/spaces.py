"""What an env's action space is, in the terms every learner, replay and checkpoint is built for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ActionSpec:
    """What the policy outputs: `continuous` [steer, accel] in [-1, 1]^dim, or `discrete` in range(n)."""

    kind: str
    n: int

    @staticmethod
    def from_space(space: Any) -> ActionSpec:
        """Build from a gymnasium space (Box -> continuous, Discrete -> discrete)."""
        if hasattr(space, "n"):
            return ActionSpec("discrete", int(space.n))
        return ActionSpec("continuous", int(np.prod(space.shape)))

    @property
    def shape(self) -> tuple[int, ...]:
        """One action as stored: () for a discrete index, (n,) for continuous controls."""
        return () if self.kind == "discrete" else (self.n,)

    @property
    def dtype(self) -> np.dtype:
        """int64 for a discrete index, float32 for continuous controls."""
        return np.dtype(np.int64 if self.kind == "discrete" else np.float32)
