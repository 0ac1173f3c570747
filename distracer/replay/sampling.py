"""Sampling a `FrameReplay`: uniform transitions, frame stacks rebuilt by following `prev`, n-step returns by
following `next` (the layout is described in storage.py). A mixin of FrameReplay, apart from the ring buffer's
writes so each reads on its own; it uses the ring's arrays (`_prev`, `_next`, `_seq`, `_first`, `_reward`, ...)
and nothing else."""

from __future__ import annotations

import lz4.block
import numpy as np


class ReplaySampling:
    """`sample(batch_size)` and its helpers; only for FrameReplay."""

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of uniformly drawn transitions.

        Returns obs and next_obs uint8 [B, k*C, H, W] (oldest frame first, frames before the
        episode's start replaced by its reset frame), action [B, *action_shape], reward float32 [B]
        (the m-step discounted sum, m <= n_step), discount float32 [B] = gamma^m * (1 - terminated).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if len(self) == 0:
            raise ValueError("the replay holds no transitions yet")
        anchors = self._draw_anchors(batch_size)
        obs_idx, _ = self._stack_indices(self._prev[anchors].astype(np.int64))
        last, reward, steps, terminated = self._n_step(anchors)
        next_idx, _ = self._stack_indices(last)
        obs, next_obs = self._gather(obs_idx, next_idx)
        discount = self.gamma ** steps.astype(np.float64) * (1.0 - terminated)
        self.samples += batch_size
        return {
            "obs": obs,
            "action": self._action[anchors],
            "reward": reward.astype(np.float32),
            "next_obs": next_obs,
            "discount": discount.astype(np.float32),
        }

    def _draw_anchors(self, batch_size: int) -> np.ndarray:
        """Slots of entries whose incoming transition can be rebuilt: uniform by rejection."""
        found: list[np.ndarray] = []
        need = batch_size
        for _ in range(64):
            # Draw extra and keep the first valid ones: still i.i.d. uniform over valid transitions.
            seqs = self._oldest + self._rng.integers(0, self.num_entries, size=max(2 * need, 32))
            slots = seqs % self.capacity
            prev = self._prev[slots].astype(np.int64)
            ok = ~self._first[slots] & self._pred_live(prev, slots)
            slots, prev = slots[ok], prev[ok]
            _, stack_ok = self._stack_indices(prev)
            slots = slots[stack_ok][:need]
            found.append(slots)
            need -= slots.size
            if need == 0:
                return np.concatenate(found)
        raise ValueError(
            f"only {batch_size - need} of {batch_size} sampled transitions could be rebuilt after 64 rounds: "
            "too few entries have their frame stack in the replay"
        )

    def _pred_live(self, prev: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Whether each `prev` slot still holds the predecessor of the entry at `slots`."""
        pseq = self._seq[prev]  # prev == -1 reads the last slot; masked out below
        return (prev >= 0) & (pseq >= self._oldest) & (pseq < self._seq[slots])

    def _stack_indices(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots [B, k] of the frames stacked into the observation ending at `ends`, and their validity.

        Walks `prev` back k-1 times; at an episode's reset frame it stays there (the padding
        gymnasium's FrameStackObservation applies). Invalid where a needed frame was evicted.
        """
        k = self.frame_stack
        idx = np.empty((ends.size, k), np.int64)
        valid = np.ones(ends.size, bool)
        cur = ends
        idx[:, k - 1] = cur
        for j in range(k - 2, -1, -1):
            at_reset = self._first[cur]
            prev = self._prev[cur].astype(np.int64)
            ok = at_reset | self._pred_live(prev, cur)
            valid &= ok
            cur = np.where(at_reset | ~ok, cur, prev)
            idx[:, j] = cur
        return idx, valid

    def _n_step(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Follow `next` up to n-1 times from each anchor, stopping at an episode's end or the stream's head.

        Returns the last entry's slot, the discounted reward sum, the steps summed and its terminated flag.
        """
        cur = anchors
        ret = self._reward[cur].astype(np.float64)
        steps = np.ones(anchors.size, np.int64)
        done = self._terminated[cur] | self._truncated[cur]
        for j in range(1, self.n_step):
            nxt = self._next[cur].astype(np.int64)
            go = ~done & (nxt >= 0)
            cur = np.where(go, nxt, cur)
            ret += np.where(go, self.gamma**j * self._reward[cur], 0.0)
            steps += go
            done |= go & (self._terminated[cur] | self._truncated[cur])
        return cur, ret, steps, self._terminated[cur].astype(np.float64)

    def _gather(self, obs_idx: np.ndarray, next_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One output allocation for both stacks: two separate multi-MB arrays per call page-fault
        # fresh memory each time under glibc's malloc (measured ~15 ms vs ~2 ms for batch 256).
        both = np.concatenate([obs_idx.ravel(), next_idx.ravel()])
        if self.compress:
            # Decompress each distinct frame once: obs and next_obs stacks share most of theirs.
            unique, inverse = np.unique(both, return_inverse=True)
            frames = np.take(self._decompress(unique), inverse, axis=0)
        else:
            frames = self._frames[both]
        stacked = self._to_channels_first(frames, 2 * obs_idx.shape[0])
        return stacked[: obs_idx.shape[0]], stacked[obs_idx.shape[0] :]

    def _decompress(self, slots: np.ndarray) -> np.ndarray:
        """Frames at `slots`, decompressed into a scratch buffer reused across calls (valid until the next)."""
        if self._scratch is None or self._scratch.shape[0] < slots.size:
            # Reused because fresh multi-MB buffers cost a page fault per 4 KiB on every call.
            self._scratch = np.empty((slots.size, *self.frame_shape), np.uint8)
        out = self._scratch[: slots.size]
        flat = out.reshape(slots.size, -1)
        arena = memoryview(self._arena)
        offsets, lengths = self._offset[slots].tolist(), self._length[slots].tolist()
        for i, (lo, n) in enumerate(zip(offsets, lengths)):
            raw = lz4.block.decompress(arena[lo : lo + n], uncompressed_size=self._frame_nbytes)
            flat[i] = np.frombuffer(raw, np.uint8)
        return out

    def _to_channels_first(self, frames: np.ndarray, batch: int) -> np.ndarray:
        """[B*k, H, W(, C)] -> [B, k*C, H, W], oldest frame first."""
        k = self.frame_stack
        if len(self.frame_shape) == 2:
            return frames.reshape(batch, k, *self.frame_shape)
        h, w, c = self.frame_shape
        return np.ascontiguousarray(frames.reshape(batch, k, h, w, c).transpose(0, 1, 4, 2, 3)).reshape(
            batch, k * c, h, w
        )
