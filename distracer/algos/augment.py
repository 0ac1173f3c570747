"""DrQ's random-shift augmentation (Kostrikov et al. 2020; implementation as in DrQ-v2's RandomShiftsAug)."""

from __future__ import annotations

import torch
from torch import nn


class RandomShiftsAug(nn.Module):
    """Pad each image by `pad` (replicating edges), then crop back at a random integer offset.

    Every image in the batch gets its own shift in [-pad, pad] pixels on each axis (shared by its channels).
    Same shifts and random draws as DrQ-v2's `grid_sample` version, done as two index gathers whose
    indices are clamped to the image (which is what replicate padding gives): exact, dtype-preserving
    (uint8 stays uint8, 4x fewer bytes moved) and about 10x faster on CPU than padding + grid_sample.
    """

    def __init__(self, pad: int = 4):
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad={pad} must be >= 0")
        self.pad = pad

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.pad == 0:
            return x
        n, c, h, w = x.shape
        if h != w:
            raise ValueError(f"RandomShiftsAug needs square images, got {h}x{w}")
        # shift[..., 0] moves along the width (x), shift[..., 1] along the height (y), as in DrQ-v2's grid.
        shift = torch.randint(0, 2 * self.pad + 1, size=(n, 1, 1, 2), device=x.device, generator=generator)
        arange = torch.arange(h, device=x.device)
        rows = (arange + shift[:, 0, 0, 1:2] - self.pad).clamp_(0, h - 1)  # (n, h)
        cols = (arange + shift[:, 0, 0, 0:1] - self.pad).clamp_(0, w - 1)  # (n, w)
        out = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
