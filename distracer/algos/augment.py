"""DrQ's random-shift augmentation (Kostrikov et al. 2020; implementation as in DrQ-v2's RandomShiftsAug)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomShiftsAug(nn.Module):
    """Pad each image by `pad` (replicating edges), then crop back at a random integer offset.

    Every image in the batch gets its own shift in [-pad, pad] pixels on each axis. Implemented with
    `grid_sample` at exact pixel centres so it runs as one batched op on the GPU.
    """

    def __init__(self, pad: int = 4):
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad={pad} must be >= 0")
        self.pad = pad

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.pad == 0:
            return x
        n, _, h, w = x.shape
        if h != w:
            raise ValueError(f"RandomShiftsAug needs square images, got {h}x{w}")
        dtype = x.dtype
        x = F.pad(x.float(), (self.pad,) * 4, mode="replicate")
        eps = 1.0 / (h + 2 * self.pad)
        arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * self.pad, device=x.device)[:h]
        arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
        base_grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
        shift = torch.randint(
            0, 2 * self.pad + 1, size=(n, 1, 1, 2), device=x.device, generator=generator
        ).to(base_grid.dtype)
        shift *= 2.0 / (h + 2 * self.pad)
        out = F.grid_sample(x, base_grid + shift, padding_mode="zeros", align_corners=False)
        return out.round().to(dtype) if dtype == torch.uint8 else out
