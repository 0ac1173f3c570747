"""RAM-budget sizing: a budget string in, per-shard capacity in transitions out, or a one-line ConfigError."""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from distracer.errors import ConfigError
from distracer.replay.storage import DEFAULT_LZ4_RATIO, entry_nbytes

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # Bare K/M/G/T: binary, as free(1), docker and Kubernetes' Ki/Mi read them.
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: str | int | float, name: str = "replay.ram_budget") -> int:
    """Bytes from "1.5GB" (decimal), "800MiB" (binary), "2e9" or a number; ConfigError naming the value."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a size; use e.g. '1.5GB', '800MiB' or 2e9")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _BUDGET_RE.match(str(value))
        if not match:
            raise ConfigError(f"{name}={value!r} is not a size; use e.g. '1.5GB', '800MiB' or 2e9")
        number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise ConfigError(f"{name}={value!r} has unknown unit {unit!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive size")
    return int(number * _UNITS[unit])


def available_memory_bytes() -> int:
    """Memory this machine can still give (MemAvailable), or total physical memory where unknown."""
    try:
        import psutil  # optional: not every install pulls it in

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def capacity_from_budget(
    ram_budget_bytes: int | str,
    num_shards: int,
    frame_shape: tuple[int, ...],
    compress: bool = False,
    *,
    batch_size: int = 256,
    action_shape: tuple[int, ...] = (2,),
    action_dtype: Any = np.float32,
    lz4_ratio: float = DEFAULT_LZ4_RATIO,
    available_bytes: int | None = None,
    name: str = "replay.ram_budget",
) -> int:
    """Per-shard capacity in transitions so that all shards together stay within the budget.

    Each shard's `FrameReplay.nbytes` is then <= budget / num_shards. Refuses a budget the machine
    cannot hold (more than its available memory; `available_bytes` overrides the measurement, e.g.
    for a cluster node's size) and one too small for a shard to hold a batch.
    """
    budget = parse_bytes(ram_budget_bytes, name)
    if num_shards < 1:
        raise ConfigError(f"replay.num_shards={num_shards} must be >= 1")
    available = available_memory_bytes() if available_bytes is None else int(available_bytes)
    if budget > available:
        raise ConfigError(
            f"{name}={ram_budget_bytes!r} ({budget / 1e9:.2f} GB) exceeds the {available / 1e9:.2f} GB "
            "of memory available on this machine"
        )
    per_entry = entry_nbytes(frame_shape, action_shape, action_dtype, compress, lz4_ratio)
    capacity = budget // num_shards // per_entry
    if capacity < batch_size:
        raise ConfigError(
            f"{name}={ram_budget_bytes!r} gives {capacity} transitions per shard ({num_shards} shards, "
            f"{per_entry} B each), fewer than one batch of {batch_size}"
        )
    return int(capacity)
