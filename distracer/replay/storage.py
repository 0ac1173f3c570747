"""Frame replay: one FIFO ring of entries that stores each frame once and rebuilds stacks at sample time.

Layout (why it is small): the seed stored obs and next_obs as two 4x84x84 stacks, 56,448 bytes a
transition. Here an *entry* is one env step: the newest 84x84 frame (7,056 bytes, or about 1.6 KB
with lz4) plus ~45 bytes of metadata. obs, next_obs and the overlapping frames of neighbouring
stacks all point at the same stored frames.

Each entry keeps the slot of the previous and next entry of the same stream. Sampling follows
`prev` back to rebuild a stack and `next` forward for n-step returns. Slots are reused in FIFO
order, so every live entry has a sequence number in [oldest, next): an entry whose `prev` points at
a slot with a sequence number outside that range, or not smaller than its own, has lost its
predecessor and its stack cannot be rebuilt; such transitions are never sampled.

With `compress=True` frames are lz4-block compressed into a byte arena used as a circular buffer,
in the same FIFO order as the entries. The arena is sized as `capacity * frame_bytes / lz4_ratio`
(assumed ratio 4.0). If frames compress better the entry ring fills first and a little arena goes
unused; if worse, the arena evicts the oldest entries early and fewer transitions are held. Either
way memory never exceeds `nbytes`.

Compression level: on stock CarRacing-v3 84x84 grayscale frames (a wandering policy, zoom-in
frames included) lz4 fast mode gave 3.5-3.7x at ~10 µs a frame and lz4 HC level 1 4.05-4.3x at
~35-55 µs (3,000 and 1,200 frames; loaded 2-core machine; docs/BENCHMARKS.md). Both decompress
at the same speed, in the same format. Fast mode misses the ~2 KB-a-transition goal (2.1 KB
measured), so the default is HC level 1 (1.9 KB); `lz4_level=0` picks fast mode.
"""

from __future__ import annotations

import math
from typing import Any

import lz4.block
import numpy as np

from distracer.errors import ConfigError
from distracer.replay.fragment import ACTION_DTYPES, Fragment
from distracer.replay.persistence import CorruptReplayError, ReplayPersistence
from distracer.replay.sampling import ReplaySampling

DEFAULT_LZ4_RATIO = 4.0
"""Compression assumed when sizing the lz4 arena: at or under the 4.05-4.3x HC level 1 gave on CarRacing frames."""
DEFAULT_LZ4_LEVEL = 1
"""lz4 high-compression level 1: 4.05-4.3x where fast mode gives 3.5-3.7x, at ~4x the compression time."""

__all__ = ["DEFAULT_LZ4_LEVEL", "DEFAULT_LZ4_RATIO", "CorruptReplayError", "FrameReplay", "entry_nbytes"]


def _metadata_nbytes(action_shape: tuple[int, ...], action_dtype: Any, compress: bool) -> int:
    """Bytes of per-entry metadata: action, reward, 3 flags, stream, seq, prev, next (+ offset, length)."""
    action = int(np.prod(action_shape, dtype=np.int64)) * np.dtype(action_dtype).itemsize
    base = action + 4 + 3 + 8 + 8 + 4 + 4
    return base + (8 + 4 if compress else 0)


def compressed_frame_nbytes(frame_nbytes: int, lz4_ratio: float) -> int:
    """Arena bytes budgeted per frame with compression."""
    return math.ceil(frame_nbytes / lz4_ratio)


def entry_nbytes(
    frame_shape: tuple[int, ...],
    action_shape: tuple[int, ...] = (2,),
    action_dtype: Any = np.float32,
    compress: bool = False,
    lz4_ratio: float = DEFAULT_LZ4_RATIO,
) -> int:
    """Bytes one entry (one transition) costs in a FrameReplay: the figure capacity sizing divides by."""
    frame = int(np.prod(frame_shape, dtype=np.int64))
    frame_cost = compressed_frame_nbytes(frame, lz4_ratio) if compress else frame
    return frame_cost + _metadata_nbytes(action_shape, action_dtype, compress)


class FrameReplay(ReplaySampling, ReplayPersistence):
    """A FIFO replay of env-step entries from many streams, sampled as stacked n-step transitions.

    Args:
        capacity: entries held (about one transition each).
        frame_shape: one frame, (H, W) grayscale or (H, W, C); stacked channel-first at sample time.
        action_shape: one action, () for a discrete index.
        action_dtype: float32 (continuous) or int64 (discrete).
        frame_stack: frames per observation, oldest first.
        n_step: reward steps summed into one target (fewer at episode ends or the stream's head).
        gamma: discount per step.
        compress: lz4-compress frames into a byte arena.
        seed: seeds the sampler.
        lz4_ratio: compression assumed when sizing the arena (ignored without compression).
        lz4_level: 0 for lz4's fast mode, 1-12 for its high-compression mode at that level.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, ...],
        action_shape: tuple[int, ...] = (2,),
        action_dtype: Any = np.float32,
        frame_stack: int = 4,
        n_step: int = 1,
        gamma: float = 0.99,
        compress: bool = False,
        seed: int | None = None,
        lz4_ratio: float = DEFAULT_LZ4_RATIO,
        lz4_level: int = DEFAULT_LZ4_LEVEL,
    ):
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.action_shape = tuple(int(d) for d in action_shape)
        self.action_dtype = np.dtype(action_dtype)
        self.frame_stack = int(frame_stack)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.compress = bool(compress)
        self.seed = seed
        self.lz4_ratio = float(lz4_ratio)
        self.lz4_level = int(lz4_level)
        self._check_args()
        self._frame_nbytes = int(np.prod(self.frame_shape))
        self._allocate()
        self._reset_state()
        self._rng = np.random.default_rng(seed)

    # ----------------------------------------------------------------------------------- setup

    def _check_args(self) -> None:
        if self.capacity < 2:
            raise ConfigError(f"replay capacity={self.capacity} must be >= 2")
        if len(self.frame_shape) not in (2, 3) or min(self.frame_shape) < 1:
            raise ConfigError(f"replay frame_shape={self.frame_shape} must be (H, W) or (H, W, C)")
        if self.action_dtype not in ACTION_DTYPES:
            raise ConfigError(f"replay action_dtype={self.action_dtype} must be float32 or int64")
        if self.frame_stack < 1:
            raise ConfigError(f"replay frame_stack={self.frame_stack} must be >= 1")
        if self.n_step < 1:
            raise ConfigError(f"replay n_step={self.n_step} must be >= 1")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"replay gamma={self.gamma} must be in [0, 1]")
        if self.compress and self.lz4_ratio <= 0:
            raise ConfigError(f"replay lz4_ratio={self.lz4_ratio} must be > 0")
        if not 0 <= self.lz4_level <= 12:
            raise ConfigError(f"replay lz4_level={self.lz4_level} must be 0 (fast) or 1-12 (high compression)")

    def _allocate(self) -> None:
        # np.zeros maps fresh pages lazily: resident memory grows as the ring fills, up to nbytes.
        cap = self.capacity
        self._action = np.zeros((cap, *self.action_shape), self.action_dtype)
        self._reward = np.zeros(cap, np.float32)
        self._terminated = np.zeros(cap, bool)
        self._truncated = np.zeros(cap, bool)
        self._first = np.zeros(cap, bool)
        self._stream = np.zeros(cap, np.int64)
        self._seq = np.zeros(cap, np.int64)
        self._prev = np.full(cap, -1, np.int32 if cap < 2**31 else np.int64)
        self._next = np.full(cap, -1, self._prev.dtype)
        if self.compress:
            arena = cap * compressed_frame_nbytes(self._frame_nbytes, self.lz4_ratio)
            # The arena must hold at least a few incompressible frames (lz4's worst-case bound).
            arena = max(arena, 4 * lz4_bound(self._frame_nbytes))
            self._arena = np.zeros(arena, np.uint8)
            self._offset = np.zeros(cap, np.int64)
            self._length = np.zeros(cap, np.int32)
            self._frames = None
        else:
            self._frames = np.zeros((cap, *self.frame_shape), np.uint8)
        # Decompression scratch for one batch (about 2*B*k frames): working memory outside nbytes.
        self._scratch: np.ndarray | None = None

    def _reset_state(self) -> None:
        self._oldest = 0  # sequence number of the oldest live entry
        self._next_seq = 0  # sequence number the next entry gets; live entries are [oldest, next_seq)
        self._transitions = 0  # live entries that are not reset frames
        self._head = 0  # next free arena byte
        self._last: dict[int, tuple[int, int]] = {}  # stream -> (slot, seq) of its newest entry
        self.inserts = 0
        self.samples = 0

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-friendly), e.g. to rebuild an equal replay."""
        return {
            "capacity": self.capacity,
            "frame_shape": list(self.frame_shape),
            "action_shape": list(self.action_shape),
            "action_dtype": self.action_dtype.name,
            "frame_stack": self.frame_stack,
            "n_step": self.n_step,
            "gamma": self.gamma,
            "compress": self.compress,
            "seed": self.seed,
            "lz4_ratio": self.lz4_ratio,
            "lz4_level": self.lz4_level,
        }

    # ------------------------------------------------------------------------------ size

    def __len__(self) -> int:
        """Transitions held (live entries that are not reset frames).

        The few at the ring's tail whose stack lost a frame to eviction are counted but never sampled.
        """
        return self._transitions

    @property
    def num_entries(self) -> int:
        return self._next_seq - self._oldest

    @property
    def nbytes(self) -> int:
        """Bytes of every array the replay holds (allocated up front; resident once filled)."""
        arrays = [self._action, self._reward, self._terminated, self._truncated, self._first]
        arrays += [self._stream, self._seq, self._prev, self._next]
        arrays += [self._arena, self._offset, self._length] if self.compress else [self._frames]
        return int(sum(a.nbytes for a in arrays))

    def stats(self) -> dict[str, Any]:
        out = {
            "size": len(self),
            "entries": self.num_entries,
            "capacity": self.capacity,
            "inserts": self.inserts,
            "samples": self.samples,
            "nbytes": self.nbytes,
            "streams": len(self._last),
        }
        if self.compress and self.num_entries:
            stored = int(self._length[self._live_slots()].sum(dtype=np.int64))
            out["frame_bytes_stored"] = stored
            out["compression_ratio"] = self.num_entries * self._frame_nbytes / max(stored, 1)
        return out

    def _live_slots(self) -> np.ndarray:
        return np.arange(self._oldest, self._next_seq, dtype=np.int64) % self.capacity

    # ------------------------------------------------------------------------------ insert

    def add(self, fragment: Fragment) -> None:
        """Append a fragment's entries; its stream continues from its previous fragment, if still held."""
        fragment.validate(self.frame_shape, self.action_shape, self.action_dtype)
        self._check_continuity(fragment)
        stream = int(fragment.stream_id)
        if self.compress:
            frames = [self._compress(f) for f in np.ascontiguousarray(fragment.frames)]
        else:
            frames = fragment.frames
        for i in range(len(fragment)):
            self._insert(
                stream,
                frames[i],
                fragment.actions[i],
                float(fragment.rewards[i]),
                bool(fragment.terminated[i]),
                bool(fragment.truncated[i]),
                bool(fragment.first[i]),
            )
        self.inserts += len(fragment)

    def _check_continuity(self, fragment: Fragment) -> None:
        last = self._last.get(int(fragment.stream_id))
        if last is None or fragment.first[0] or not self._is_live(last[1]):
            return
        slot = last[0]
        if self._terminated[slot] or self._truncated[slot]:
            raise ValueError(
                f"fragment of stream {fragment.stream_id} continues an episode that already ended; "
                "its first entry must be a reset frame (first=True)"
            )

    def _is_live(self, seq: int) -> bool:
        return self._oldest <= seq < self._next_seq

    def _insert(
        self, stream: int, frame: Any, action: Any, reward: float, terminated: bool, truncated: bool, first: bool
    ) -> None:
        seq = self._next_seq
        slot = seq % self.capacity
        if seq - self._oldest >= self.capacity:
            self._evict_to(seq - self.capacity + 1)
        if self.compress:
            self._store_blob(slot, frame)
        else:
            self._frames[slot] = frame
        self._action[slot] = action
        self._reward[slot] = reward
        self._terminated[slot] = terminated
        self._truncated[slot] = truncated
        self._first[slot] = first
        self._stream[slot] = stream
        self._seq[slot] = seq
        self._next[slot] = -1
        self._prev[slot] = -1
        last = self._last.get(stream)
        # Link within an episode only; the arena may just have evicted the predecessor, so check liveness now.
        if not first:
            if last is not None and self._is_live(last[1]):
                self._prev[slot] = last[0]
                self._next[last[0]] = slot
            self._transitions += 1
        self._last[stream] = (slot, seq)
        self._next_seq = seq + 1

    def _evict_to(self, new_oldest: int) -> None:
        """Drop entries with seq < new_oldest (FIFO), keeping the transition count exact."""
        if new_oldest <= self._oldest:
            return
        if new_oldest == self._oldest + 1:  # the steady state once full: one entry per insert, no arrays
            self._transitions -= not self._first[self._oldest % self.capacity]
            self._oldest = new_oldest
            return
        slots = np.arange(self._oldest, new_oldest, dtype=np.int64) % self.capacity
        self._transitions -= int(np.count_nonzero(~self._first[slots]))
        self._oldest = new_oldest

    def _store_blob(self, slot: int, blob: bytes) -> None:
        size = len(blob)
        offset = self._reserve(size)
        self._arena[offset : offset + size] = np.frombuffer(blob, np.uint8)
        self._offset[slot] = offset
        self._length[slot] = size

    def _reserve(self, size: int) -> int:
        """Arena bytes for a new blob, evicting the oldest entries that sit where it goes.

        Live blobs lie in seq order along the arena, circularly. A blob that does not fit before the
        end goes to offset 0; the end's unused tail is skipped, and the (oldest) blobs still there go.
        """
        arena = self._arena.size
        if size > arena:
            raise ValueError(f"a compressed frame of {size} bytes exceeds the replay arena of {arena} bytes")
        start = self._head
        wrapped = start + size > arena
        if wrapped:
            start = 0
        end = start + size
        while self._oldest < self._next_seq:
            oldest = self._oldest % self.capacity
            lo = int(self._offset[oldest])
            hi = lo + int(self._length[oldest])
            in_skipped_tail = wrapped and lo >= self._head
            if not (in_skipped_tail or (lo < end and hi > start)):
                break
            self._evict_to(self._oldest + 1)
        self._head = end
        return start

    def _compress(self, frame: Any) -> bytes:
        if self.lz4_level == 0:
            return lz4.block.compress(frame, store_size=False)
        return lz4.block.compress(frame, store_size=False, mode="high_compression", compression=self.lz4_level)


def lz4_bound(n: int) -> int:
    """lz4's worst-case compressed size of n bytes (LZ4_COMPRESSBOUND)."""
    return n + n // 255 + 16
