"""The contract between rollout workers and replay shards: a `Fragment` of one environment stream.

A fragment holds consecutive *entries* of one stream. Entry i carries the newest frame of the
observation reached after it, and the action, reward and termination flags of the step that led
there. An episode's reset frame is an entry with ``first=True`` and no transition into it (its
action and reward are zeros). Workers never send stacked observations: the replay stores each
frame once and rebuilds stacks at sample time, which is why ``first`` must be exact.

Fragments of a stream arrive in order; a fragment may start or end mid-episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTION_DTYPES = (np.dtype(np.float32), np.dtype(np.int64))


@dataclass
class Fragment:
    """Consecutive entries of ONE environment stream, as numpy arrays of length T."""

    stream_id: int
    """Unique in the run, e.g. worker_index * 1000 + env_index."""
    frames: np.ndarray
    """uint8 [T, *frame_shape]: the newest frame of the observation after each entry."""
    actions: np.ndarray
    """[T, *action_shape], float32 (continuous) or int64 (discrete); zeros on `first` entries."""
    rewards: np.ndarray
    """float32 [T]; zero on `first` entries."""
    terminated: np.ndarray
    """bool [T]: the MDP ended at this entry (no bootstrap)."""
    truncated: np.ndarray
    """bool [T]: the episode was cut at this entry (time limit); bootstrapping stays valid."""
    first: np.ndarray
    """bool [T]: an episode's reset frame; no transition leads into it."""
    weights_version: int = 0
    """Version of the policy weights that chose these actions (the oldest, if it changed)."""

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.frames.shape[1:])

    @property
    def action_shape(self) -> tuple[int, ...]:
        return tuple(self.actions.shape[1:])

    def validate(
        self,
        frame_shape: tuple[int, ...] | None = None,
        action_shape: tuple[int, ...] | None = None,
        action_dtype: np.dtype | type | None = None,
    ) -> None:
        """Raise ValueError naming the first broken rule; optionally check shapes against a replay's."""
        n = len(self)
        if n < 1:
            raise ValueError(f"fragment of stream {self.stream_id} is empty")
        _check_array("frames", self.frames, n, np.uint8, self.stream_id)
        _check_array("rewards", self.rewards, n, np.float32, self.stream_id)
        for name in ("terminated", "truncated", "first"):
            _check_array(name, getattr(self, name), n, np.bool_, self.stream_id)
        _check_array("actions", self.actions, n, None, self.stream_id)
        if self.actions.dtype not in ACTION_DTYPES:
            raise ValueError(
                f"fragment of stream {self.stream_id}: actions dtype {self.actions.dtype} is not float32 or int64"
            )
        if self.frames.ndim < 3:
            raise ValueError(
                f"fragment of stream {self.stream_id}: frames shape {self.frames.shape} is not [T, H, W(, C)]"
            )
        _check_expected("frame shape", self.frame_shape, frame_shape, self.stream_id)
        _check_expected("action shape", self.action_shape, action_shape, self.stream_id)
        if action_dtype is not None and self.actions.dtype != np.dtype(action_dtype):
            raise ValueError(
                f"fragment of stream {self.stream_id}: actions dtype {self.actions.dtype}, "
                f"replay expects {np.dtype(action_dtype)}"
            )
        self._validate_episode_flags()

    def _validate_episode_flags(self) -> None:
        done = self.terminated | self.truncated
        bad = np.flatnonzero(self.first & done)
        if bad.size:
            raise ValueError(
                f"fragment of stream {self.stream_id}: entry {bad[0]} is a reset frame (first) "
                "and also terminated/truncated"
            )
        # After an episode ends the next entry must be the next episode's reset frame.
        bad = np.flatnonzero(done[:-1] & ~self.first[1:])
        if bad.size:
            raise ValueError(
                f"fragment of stream {self.stream_id}: entry {bad[0] + 1} follows the end of an episode "
                "but is not marked first"
            )


def _check_array(name: str, arr: np.ndarray, n: int, dtype: type | None, stream_id: int) -> None:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"fragment of stream {stream_id}: {name} is {type(arr).__name__}, not a numpy array")
    if arr.ndim < 1 or arr.shape[0] != n:
        raise ValueError(f"fragment of stream {stream_id}: {name} has shape {arr.shape}, expected length {n}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise ValueError(f"fragment of stream {stream_id}: {name} dtype is {arr.dtype}, expected {np.dtype(dtype)}")


def _check_expected(what: str, got: tuple, expected: tuple | None, stream_id: int) -> None:
    if expected is not None and tuple(got) != tuple(expected):
        raise ValueError(f"fragment of stream {stream_id}: {what} {tuple(got)}, replay expects {tuple(expected)}")


@dataclass
class FragmentBuilder:
    """Collects one stream's entries step by step; `flush()` hands them over as a Fragment.

    Typical worker loop::

        builder.add_reset(obs[-1])
        ...
        builder.add_step(next_obs[-1], action, reward, terminated, truncated)
        if terminated or truncated:
            builder.add_reset(reset_obs[-1])
        if len(builder) >= fragment_length:
            shard.add.remote(builder.flush(weights_version))
    """

    stream_id: int
    action_shape: tuple[int, ...] = ()
    action_dtype: type = np.float32
    _frames: list[np.ndarray] = field(default_factory=list, repr=False)
    _actions: list[np.ndarray] = field(default_factory=list, repr=False)
    _rewards: list[float] = field(default_factory=list, repr=False)
    _terminated: list[bool] = field(default_factory=list, repr=False)
    _truncated: list[bool] = field(default_factory=list, repr=False)
    _first: list[bool] = field(default_factory=list, repr=False)
    # Episode state survives flushes: a step needs a live episode, whichever fragment it lands in.
    _in_episode: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self._rewards)

    def add_reset(self, frame: np.ndarray) -> None:
        """Record an episode's reset frame (the newest frame of the reset observation)."""
        self._append(frame, np.zeros(self.action_shape, self.action_dtype), 0.0, False, False, True)
        self._in_episode = True

    def add_step(
        self, frame: np.ndarray, action: np.ndarray | int | float, reward: float, terminated: bool, truncated: bool
    ) -> None:
        """Record one env step: the newest frame after it, the action taken and what it returned."""
        if not self._in_episode:
            raise ValueError(
                f"stream {self.stream_id}: add_step without a live episode; call add_reset first "
                "(also after terminated/truncated)"
            )
        action = np.asarray(action, dtype=self.action_dtype).reshape(self.action_shape)
        self._append(frame, action, float(reward), bool(terminated), bool(truncated), False)
        self._in_episode = not (terminated or truncated)

    def flush(self, weights_version: int = 0) -> Fragment | None:
        """Return the entries collected since the last flush as a validated Fragment, or None if none."""
        if not self._rewards:
            return None
        fragment = Fragment(
            stream_id=self.stream_id,
            frames=np.stack(self._frames),
            actions=np.stack(self._actions),
            rewards=np.asarray(self._rewards, dtype=np.float32),
            terminated=np.asarray(self._terminated, dtype=bool),
            truncated=np.asarray(self._truncated, dtype=bool),
            first=np.asarray(self._first, dtype=bool),
            weights_version=int(weights_version),
        )
        for buf in (self._frames, self._actions, self._rewards, self._terminated, self._truncated, self._first):
            buf.clear()
        fragment.validate()
        return fragment

    def _append(
        self, frame: np.ndarray, action: np.ndarray, reward: float, terminated: bool, truncated: bool, first: bool
    ) -> None:
        # Copy: env wrappers may hand out views of buffers they reuse on the next step.
        frame = np.array(frame, dtype=np.uint8, copy=True)
        if self._frames and frame.shape != self._frames[0].shape:
            raise ValueError(f"stream {self.stream_id}: frame shape {frame.shape} differs from {self._frames[0].shape}")
        self._frames.append(frame)
        self._actions.append(action)
        self._rewards.append(reward)
        self._terminated.append(terminated)
        self._truncated.append(truncated)
        self._first.append(first)
