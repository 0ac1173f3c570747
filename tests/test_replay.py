"""Replay invariants checked against a naive reference built from the full list of entries.

Every frame encodes its entry's global id in its first bytes, and every action holds that id too,
so a sampled transition can be traced back to the entries it was built from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest

from distracer.errors import ConfigError
from distracer.replay import (
    CorruptReplayError,
    Fragment,
    FragmentBuilder,
    FrameReplay,
    capacity_from_budget,
    entry_nbytes,
    parse_bytes,
)
from distracer.replay.persistence import MANIFEST

FRAME = (6, 7)


def encode_frame(gid: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    frame = rng.integers(0, 256, size=shape, dtype=np.uint8)
    frame.reshape(-1)[:3] = np.frombuffer(int(gid).to_bytes(3, "little"), np.uint8)
    return frame


def decode_frames(frames: np.ndarray) -> np.ndarray:
    """Ids of frames [..., *shape] (channel-first stacks are decoded per stacked frame by the caller)."""
    flat = frames.reshape(*frames.shape[: frames.ndim - len(FRAME)], -1).astype(np.int64)
    return flat[..., 0] | (flat[..., 1] << 8) | (flat[..., 2] << 16)


@dataclass
class Entry:
    gid: int
    stream: int
    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    first: bool


@dataclass
class Reference:
    """All entries in insertion order, per stream; eligibility and targets computed the slow, obvious way."""

    entries: list[Entry] = field(default_factory=list)
    by_stream: dict[int, list[int]] = field(default_factory=dict)

    def add(self, e: Entry) -> None:
        self.entries.append(e)
        self.by_stream.setdefault(e.stream, []).append(e.gid)

    def predecessor(self, gid: int) -> int | None:
        """The previous entry in the same episode, if it was ever inserted."""
        e = self.entries[gid]
        if e.first:
            return None
        ids = self.by_stream[e.stream]
        pos = ids.index(gid)
        return ids[pos - 1] if pos > 0 else None

    def stack(self, end: int, k: int) -> list[int] | None:
        """Ids of the k-frame stack ending at `end`, padded with the reset frame; None if a frame is missing."""
        out = [end]
        cur = end
        while len(out) < k:
            if self.entries[cur].first:
                out.append(cur)
                continue
            prev = self.predecessor(cur)
            if prev is None:
                return None
            out.append(prev)
            cur = prev
        return out[::-1]

    def eligible(self, gid: int, k: int, oldest: int) -> bool:
        """Whether the transition into `gid` can be sampled: it is live and its obs stack is all live."""
        if gid < oldest or self.entries[gid].first:
            return False
        prev = self.predecessor(gid)
        stack = None if prev is None else self.stack(prev, k)
        return stack is not None and min(stack) >= oldest

    def n_step(self, gid: int, n: int, gamma: float) -> tuple[int, float, float]:
        """(last id, discounted reward, discount) of the m-step target starting at `gid`."""
        ids = self.by_stream[self.entries[gid].stream]
        pos = ids.index(gid)
        ret, m, last = 0.0, 0, gid
        for j in range(n):
            if pos + j >= len(ids) or (j > 0 and self.entries[ids[pos + j]].first):
                break
            last = ids[pos + j]
            e = self.entries[last]
            ret += gamma**j * e.reward
            m += 1
            if e.terminated or e.truncated:
                break
        return last, ret, gamma**m * (0.0 if self.entries[last].terminated else 1.0)


def make_streams(
    rng: np.random.Generator, num_streams: int, steps: int, shape: tuple[int, ...], mid_episode: bool
) -> list[list[tuple]]:
    """Per stream, its entries as (frame-less) tuples (reward, terminated, truncated, first)."""
    streams = []
    for s in range(num_streams):
        out, t = [], 0
        first = not (mid_episode and s == 0)  # stream 0 joins mid-episode: no reset frame seen
        for _ in range(steps):
            if first:
                out.append((0.0, False, False, True))
                first, t = False, 0
                continue
            t += 1
            end = rng.random() < 0.08 or t >= 15
            terminated = bool(end and rng.random() < 0.5)
            out.append((float(rng.normal()), terminated, bool(end and not terminated), False))
            first = end
        streams.append(out)
    return streams


def feed(
    replay: FrameReplay,
    ref: Reference,
    rng: np.random.Generator,
    streams: list[list[tuple]],
    shape: tuple[int, ...],
    after_each=None,
) -> None:
    """Cut each stream into fragments of random length and add them interleaved, in order per stream."""
    cursors = [0] * len(streams)
    while any(c < len(s) for c, s in zip(cursors, streams)):
        s = int(rng.choice([i for i, s in enumerate(streams) if cursors[i] < len(s)]))
        length = int(rng.integers(1, 9))
        rows = streams[s][cursors[s] : cursors[s] + length]
        cursors[s] += len(rows)
        frames, actions = [], []
        for reward, terminated, truncated, first in rows:
            gid = len(ref.entries)
            frame = encode_frame(gid, shape, rng)
            ref.add(Entry(gid, 100 + s, frame, reward, terminated, truncated, first))
            frames.append(frame)
            actions.append([gid, -gid])
        fragment = Fragment(
            stream_id=100 + s,
            frames=np.stack(frames),
            actions=np.asarray(actions, np.float32),
            rewards=np.asarray([r[0] for r in rows], np.float32),
            terminated=np.asarray([r[1] for r in rows]),
            truncated=np.asarray([r[2] for r in rows]),
            first=np.asarray([r[3] for r in rows]),
        )
        replay.add(fragment)
        if after_each is not None:
            after_each()


def stack_ids(stacked: np.ndarray, k: int) -> np.ndarray:
    """[B, k*C, H, W] -> ids [B, k]; back to [B, k, H, W(, C)] first."""
    b = stacked.shape[0]
    if len(FRAME) == 2 and stacked.shape[1] == k:
        return decode_frames(stacked)
    c = stacked.shape[1] // k
    frames = stacked.reshape(b, k, c, *stacked.shape[2:]).transpose(0, 1, 3, 4, 2)
    flat = frames.reshape(b, k, -1).astype(np.int64)
    return flat[..., 0] | (flat[..., 1] << 8) | (flat[..., 2] << 16)


def check_batch(replay: FrameReplay, ref: Reference, batch: dict[str, np.ndarray]) -> set[int]:
    """Assert every sampled transition equals the reference's; return the anchors (entries transitioned into)."""
    k, n, gamma = replay.frame_stack, replay.n_step, replay.gamma
    obs_ids, next_ids = stack_ids(batch["obs"], k), stack_ids(batch["next_obs"], k)
    anchors = batch["action"][:, 0].astype(np.int64)
    np.testing.assert_array_equal(batch["action"][:, 1], -batch["action"][:, 0])
    for b, gid in enumerate(anchors.tolist()):
        assert ref.eligible(gid, k, replay._oldest), f"sampled ineligible transition into {gid}"
        prev = ref.predecessor(gid)
        assert obs_ids[b].tolist() == ref.stack(prev, k)
        last, ret, discount = ref.n_step(gid, n, gamma)
        assert next_ids[b].tolist() == ref.stack(last, k)
        assert batch["reward"][b] == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert batch["discount"][b] == pytest.approx(discount, rel=1e-6)
        # Full pixels too, not only the encoded ids.
        expected = np.stack([ref.entries[i].frame for i in ref.stack(prev, k)])
        np.testing.assert_array_equal(to_frames(batch["obs"][b], k), expected)
    assert batch["obs"].dtype == np.uint8 and batch["reward"].dtype == np.float32
    assert batch["discount"].dtype == np.float32
    return set(anchors.tolist())


def to_frames(stacked: np.ndarray, k: int) -> np.ndarray:
    """One [k*C, H, W] observation -> [k, *FRAME]."""
    if len(FRAME) == 2:
        return stacked
    c = stacked.shape[0] // k
    return stacked.reshape(k, c, *stacked.shape[1:]).transpose(0, 2, 3, 1)


def run_against_reference(
    capacity: int,
    frame_stack: int,
    n_step: int,
    compress: bool,
    lz4_ratio: float = 0.25,
    seed: int = 0,
    lz4_level: int = 1,
) -> tuple[FrameReplay, Reference]:
    rng = np.random.default_rng(seed)
    replay = FrameReplay(
        capacity,
        FRAME,
        (2,),
        np.float32,
        frame_stack,
        n_step,
        0.9,
        compress,
        seed=seed,
        lz4_ratio=lz4_ratio,
        lz4_level=lz4_level,
    )
    ref = Reference()
    streams = make_streams(rng, num_streams=3, steps=120, shape=FRAME, mid_episode=True)

    def sample_and_check() -> None:
        if len(ref.entries) % 5 == 0 and any(
            ref.eligible(g, frame_stack, replay._oldest) for g in range(len(ref.entries))
        ):
            check_batch(replay, ref, replay.sample(16))

    feed(replay, ref, rng, streams, FRAME, after_each=sample_and_check)
    return replay, ref


@pytest.mark.parametrize(
    "frame_stack,n_step,compress",
    [(4, 1, False), (4, 3, False), (1, 1, False), (3, 5, True)],
)
def test_samples_match_reference_with_wraparound_and_interleaving(frame_stack, n_step, compress):
    capacity = 50
    replay, ref = run_against_reference(capacity, frame_stack, n_step, compress)
    assert len(ref.entries) > 5 * capacity  # wrapped several times
    assert replay._oldest == len(ref.entries) - capacity
    live = range(replay._oldest, len(ref.entries))
    assert len(replay) == sum(not ref.entries[g].first for g in live)
    eligible = {g for g in live if ref.eligible(g, frame_stack, replay._oldest)}
    # Enough draws to see every eligible transition: sampling covers all of them and nothing else.
    seen = check_batch(replay, ref, replay.sample(3000))
    assert seen == eligible


def test_rgb_frames_stack_channel_first(monkeypatch):
    monkeypatch.setitem(globals(), "FRAME", (5, 4, 3))
    rng = np.random.default_rng(1)
    replay = FrameReplay(40, FRAME, (2,), np.float32, frame_stack=2, n_step=2, gamma=0.9, seed=1)
    ref = Reference()
    feed(replay, ref, rng, make_streams(rng, 2, 60, FRAME, False), FRAME)
    batch = replay.sample(500)
    assert batch["obs"].shape == (500, 6, 5, 4)
    check_batch(replay, ref, batch)


def test_stack_never_crosses_an_episode_boundary():
    """A 2-step episode after a 3-step one: its stacks hold only its own frames, padded with its reset."""
    replay = FrameReplay(20, (2, 2), (), np.int64, frame_stack=4, n_step=3, gamma=0.5, seed=0)
    b = FragmentBuilder(stream_id=7, action_shape=(), action_dtype=np.int64)
    frame = lambda v: np.full((2, 2), v, np.uint8)  # noqa: E731
    b.add_reset(frame(1))
    b.add_step(frame(2), 1, 1.0, False, False)
    b.add_step(frame(3), 2, 1.0, True, False)
    b.add_reset(frame(10))
    b.add_step(frame(11), 3, 2.0, False, False)
    b.add_step(frame(12), 4, 4.0, False, True)
    replay.add(b.flush())
    batch = replay.sample(200)
    by_action = {int(a): i for i, a in enumerate(batch["action"])}
    assert set(by_action) == {1, 2, 3, 4}
    pixels = lambda x: x[:, 0, 0].tolist()  # noqa: E731
    i = by_action[3]  # first step of episode 2
    assert pixels(batch["obs"][i]) == [10, 10, 10, 10]
    assert pixels(batch["next_obs"][i]) == [10, 10, 11, 12]  # m=2: ends at the truncated entry
    assert batch["reward"][i] == pytest.approx(2.0 + 0.5 * 4.0)  # stops at truncation: m=2
    assert batch["discount"][i] == pytest.approx(0.25)  # truncated: still bootstraps
    i = by_action[1]
    assert pixels(batch["obs"][i]) == [1, 1, 1, 1]
    assert pixels(batch["next_obs"][i]) == [1, 1, 2, 3]  # m=2: ends at the terminal entry
    assert batch["reward"][i] == pytest.approx(1.5) and batch["discount"][i] == 0.0


def test_n_step_shortens_at_the_stream_head_until_successors_arrive():
    replay = FrameReplay(20, (2, 2), (2,), np.float32, frame_stack=1, n_step=3, gamma=0.5, seed=0)
    b = FragmentBuilder(stream_id=1, action_shape=(2,))
    b.add_reset(np.zeros((2, 2), np.uint8))
    b.add_step(np.ones((2, 2), np.uint8), [1, 0], 1.0, False, False)
    replay.add(b.flush())
    batch = replay.sample(4)
    assert np.all(batch["discount"] == np.float32(0.5)) and np.all(batch["reward"] == 1.0)
    b.add_step(np.ones((2, 2), np.uint8), [2, 0], 1.0, False, False)
    b.add_step(np.ones((2, 2), np.uint8), [3, 0], 1.0, False, False)
    replay.add(b.flush())
    batch = replay.sample(64)
    first_step = batch["action"][:, 0] == 1
    assert np.allclose(batch["reward"][first_step], 1.75) and np.allclose(batch["discount"][first_step], 0.125)


def test_arena_eviction_when_frames_compress_worse_than_assumed():
    """Random frames do not compress: the lz4 arena binds before the ring, and samples stay correct."""
    replay, ref = run_against_reference(capacity=60, frame_stack=4, n_step=2, compress=True, lz4_ratio=4.0)
    assert replay.num_entries < 60
    live = np.arange(replay._oldest, len(ref.entries))
    stored = replay._decompress(live % 60)
    np.testing.assert_array_equal(stored, np.stack([ref.entries[g].frame for g in live]))
    spans = sorted((replay._offset[g % 60], replay._offset[g % 60] + replay._length[g % 60]) for g in live)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))  # live blobs never overlap
    assert replay.nbytes == 60 * entry_nbytes(FRAME, (2,), np.float32, True, 4.0)
    eligible = {g for g in range(replay._oldest, len(ref.entries)) if ref.eligible(g, 4, replay._oldest)}
    assert check_batch(replay, ref, replay.sample(2000)) == eligible


@pytest.mark.parametrize("lz4_level", [0, 1, 9])
def test_lz4_samples_equal_uncompressed_samples(lz4_level):
    plain, _ = run_against_reference(50, 4, 3, compress=False, seed=3)
    packed, _ = run_against_reference(50, 4, 3, compress=True, seed=3, lz4_level=lz4_level)
    for _ in range(3):
        a, b = plain.sample(64), packed.sample(64)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("compress", [False, True])
def test_save_restore_gives_identical_samples(tmp_path, compress):
    replay, _ = run_against_reference(50, 4, 3, compress=compress, seed=5)
    replay.save(tmp_path)
    replay.save(tmp_path)  # overwriting a save leaves one data file
    assert len([p for p in os.listdir(tmp_path) if p.endswith(".arrow")]) == 1
    restored = FrameReplay(**replay.config())
    restored.restore(tmp_path)
    loaded = FrameReplay.load(tmp_path)
    assert len(restored) == len(replay) and restored.stats() == replay.stats()
    for _ in range(3):
        a, b, c = replay.sample(32), restored.sample(32), loaded.sample(32)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])


def test_restore_across_compression_settings(tmp_path):
    replay, _ = run_against_reference(50, 4, 2, compress=True, seed=6)
    replay.save(tmp_path)
    plain = FrameReplay.load(tmp_path, compress=False)
    for _ in range(2):
        a, b = replay.sample(32), plain.sample(32)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_corrupt_or_missing_save_raises_clear_errors(tmp_path):
    replay, _ = run_against_reference(50, 4, 1, compress=False, seed=7)
    with pytest.raises(CorruptReplayError, match="replay.json is missing"):
        FrameReplay.load(tmp_path)
    replay.save(tmp_path)
    data = next(p for p in tmp_path.iterdir() if p.suffix == ".arrow")
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(CorruptReplayError, match="sha256"):
        FrameReplay.load(tmp_path)
    data.write_bytes(bytes(blob[: len(blob) // 3]))
    with pytest.raises(CorruptReplayError, match="truncated"):
        FrameReplay.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptReplayError, match="unreadable"):
        FrameReplay.load(tmp_path)
    other = FrameReplay(10, (3, 3))
    replay.save(tmp_path)
    with pytest.raises(ConfigError, match="frame_shape"):
        other.restore(tmp_path)


def test_fragment_validation_errors():
    b = FragmentBuilder(stream_id=3, action_shape=(2,))
    with pytest.raises(ValueError, match="add_reset first"):
        b.add_step(np.zeros((4, 4)), [0, 0], 0.0, False, False)
    assert b.flush() is None
    b.add_reset(np.zeros((4, 4)))
    b.add_step(np.zeros((4, 4)), [0, 0], 1.0, True, False)
    with pytest.raises(ValueError, match="add_reset first"):
        b.add_step(np.zeros((4, 4)), [0, 0], 0.0, False, False)
    fragment = b.flush()
    assert len(fragment) == 2 and fragment.frames.dtype == np.uint8
    bad = Fragment(
        3, fragment.frames, fragment.actions, fragment.rewards.astype(np.float64), *([fragment.terminated] * 3)
    )
    with pytest.raises(ValueError, match="rewards dtype"):
        bad.validate()
    bad = Fragment(
        3,
        fragment.frames[:1],
        fragment.actions,
        fragment.rewards,
        fragment.terminated,
        fragment.truncated,
        fragment.first,
    )
    with pytest.raises(ValueError, match="frames has shape"):
        bad.validate()
    ended = Fragment(
        3,
        fragment.frames,
        fragment.actions,
        fragment.rewards,
        np.array([False, True]),
        fragment.truncated,
        np.array([False, False]),
    )
    replay = FrameReplay(10, (4, 4))
    with pytest.raises(ValueError, match="frame shape"):
        FrameReplay(10, (5, 5)).add(fragment)
    replay.add(ended)
    with pytest.raises(ValueError, match="already ended"):
        replay.add(ended)


@pytest.mark.parametrize(
    "text,expected",
    [("1.5GB", 1_500_000_000), ("800MiB", 800 * 2**20), ("2e9", 2_000_000_000), (" 3 gib ", 3 * 2**30), (4096, 4096)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "1.5 parsecs", "-1GB", "0", True])
def test_parse_bytes_rejects(text):
    with pytest.raises(ConfigError, match="replay.ram_budget"):
        parse_bytes(text)


@pytest.mark.parametrize("compress", [False, True])
def test_capacity_from_budget_respects_budget(compress):
    budget, shards = 50 * 10**6, 3
    cap = capacity_from_budget("50MB", shards, (84, 84), compress, batch_size=256, available_bytes=10**9)
    replay = FrameReplay(cap, (84, 84), compress=compress)
    assert replay.nbytes <= budget // shards
    assert replay.nbytes + entry_nbytes((84, 84), compress=compress) > budget // shards  # and uses it
    assert entry_nbytes((84, 84), compress=False) <= 7200
    assert entry_nbytes((84, 84), compress=True) <= 2000


def test_capacity_from_budget_refusals():
    with pytest.raises(ConfigError, match="exceeds"):
        capacity_from_budget("2GB", 1, (84, 84), available_bytes=10**9)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        capacity_from_budget("1MB", 1, (84, 84), batch_size=256, available_bytes=10**9)
    with pytest.raises(ConfigError, match="exceeds"):
        capacity_from_budget("1000TB", 1, (84, 84))  # against this machine's real free memory


def test_replay_shard_actor_receives_fragments_and_returns_samples(ray_local, tmp_path):
    from distracer.replay.shard import ReplayShard

    ray = ray_local
    shard = ReplayShard.options(num_cpus=0.5).remote(
        capacity=100,
        frame_shape=(84, 84),
        action_shape=(),
        action_dtype=np.int64,
        n_step=3,
        compress=True,
        seed=0,
        lz4_ratio=0.5,  # random frames: no gain
    )
    b = FragmentBuilder(stream_id=1001, action_shape=(), action_dtype=np.int64)
    rng = np.random.default_rng(0)
    b.add_reset(rng.integers(0, 255, (84, 84), dtype=np.uint8))
    refs = []
    for t in range(60):
        b.add_step(rng.integers(0, 255, (84, 84), dtype=np.uint8), t % 5, 1.0, False, t == 59)
        if len(b) == 20:
            refs.append(shard.add.remote(b.flush(weights_version=t)))
    refs.append(shard.add.remote(b.flush(weights_version=60)))
    assert ray.get(refs)[-1] == 61
    batch = ray.get(shard.sample.remote(32))
    assert batch["obs"].shape == (32, 4, 84, 84) and batch["action"].dtype == np.int64
    stats = ray.get(shard.stats.remote())
    assert stats["size"] == 60 and stats["inserts"] == 61 and stats["samples"] == 32
    ray.get(shard.save.remote(str(tmp_path)))
    assert ray.get(shard.restore.remote(str(tmp_path)))["size"] == 60
