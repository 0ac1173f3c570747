"""The replay-shard actor: a FrameReplay behind Ray, written to by workers and sampled by the learner.

`ReplayShardImpl` is the plain class (tests use it without Ray); `ReplayShard` is the actor class.
Workers call `shard.add.remote(fragment)` themselves, so sample data never passes through the driver;
`sample` returns numpy arrays, which the learner reads zero-copy from Ray's object store.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray

from distracer.replay.fragment import Fragment
from distracer.replay.storage import FrameReplay


class ReplayShardImpl:
    """One shard: a FrameReplay built from the same keyword arguments, plus a shard index for logs and stats."""

    def __init__(self, shard_index: int = 0, **replay_args: Any):
        self.shard_index = shard_index
        self.replay = FrameReplay(**replay_args)

    def add(self, fragment: Fragment) -> int:
        """Store a fragment; returns the shard's total inserted entries (for the driver's rate limiter)."""
        self.replay.add(fragment)
        return self.replay.inserts

    def add_many(self, fragments: list[Fragment]) -> int:
        """Store several fragments in one call (fewer round trips for many small fragments)."""
        for fragment in fragments:
            self.replay.add(fragment)
        return self.replay.inserts

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        return self.replay.sample(batch_size)

    def stats(self) -> dict[str, Any]:
        """size, capacity, inserts, samples, nbytes (and the compression achieved, with lz4)."""
        return {"shard_index": self.shard_index, **self.replay.stats()}

    def save(self, path: str | os.PathLike) -> None:
        self.replay.save(path)

    def restore(self, path: str | os.PathLike) -> dict[str, Any]:
        self.replay.restore(path)
        return self.stats()

    def ready(self) -> bool:
        """Cheap call to wait for the actor to be constructed."""
        return True


# One CPU: sampling and lz4 are CPU-bound. On a 2-core laptop use ReplayShard.options(num_cpus=0.5).
ReplayShard = ray.remote(num_cpus=1)(ReplayShardImpl)
