"""Saving and restoring a `FrameReplay` (a checkpoint's replay/shard_<i>): Arrow IPC data plus a JSON manifest.

    shard_0/
        replay-<id>.arrow   the live entries, oldest first (seq, stream, frame, action, reward, flags)
        replay.json         format, data file name, size, sha256, rows, the replay's config and sampler state

Atomic: the data goes to a new uniquely named file, then the manifest naming it replaces the old one in one
os.replace (`distracer.atomic`); a crash leaves the previous save intact. Restoring checks the size and
checksum first, and takes another capacity or compression setting than the one saved.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from typing import Any, TypeVar

import lz4.block
import numpy as np
import pyarrow as pa

from distracer.atomic import sha256_file, write_bytes_atomically
from distracer.errors import ConfigError

FORMAT = "distracer.replay/1"
MANIFEST = "replay.json"
# Entries written per Arrow record batch: bounds the extra memory a save needs (8192 raw 84x84 frames: 58 MB).
SAVE_CHUNK = 8192


class CorruptReplayError(ConfigError):
    """A saved replay directory that is missing, truncated, altered or of another layout."""


R = TypeVar("R", bound="ReplayPersistence")


class ReplayPersistence:
    """Save/restore of `FrameReplay` (its base class): works on the ring's own arrays and `_insert`."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the live entries and sampler state to directory `path` (Arrow IPC + JSON manifest).

        Atomic: the data goes to a new uniquely named file, then the manifest naming it and its
        checksum replaces the old one in one os.replace; a crash leaves the previous save intact.
        """
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        name = f"replay-{uuid.uuid4().hex[:12]}.arrow"
        data_path = os.path.join(path, name)
        rows = self._write_arrow(data_path + ".tmp")
        digest, size = _file_digest(data_path + ".tmp")
        os.replace(data_path + ".tmp", data_path)
        manifest = {
            "format": FORMAT,
            "data": name,
            "bytes": size,
            "sha256": digest,
            "rows": rows,
            "config": self.config(),
            "state": {
                "oldest": self._oldest,
                "next_seq": self._next_seq,
                "inserts": self.inserts,
                "samples": self.samples,
                "rng": self._rng.bit_generator.state,
            },
        }
        write_bytes_atomically(os.path.join(path, MANIFEST), json.dumps(manifest).encode())
        for stale in glob.glob(os.path.join(path, "replay-*.arrow*")):
            if os.path.basename(stale) != name:
                os.remove(stale)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike, **overrides: Any) -> R:
        """A replay built from a saved directory's config (`overrides` replace config values) and restored."""
        manifest = _read_manifest(os.fspath(path))
        config = {**manifest["config"], **overrides}
        replay = cls(**config)
        replay.restore(path)
        return replay

    def restore(self, path: str | os.PathLike) -> None:
        """Replace this replay's contents with a saved directory's, checking it first.

        Frame and action layout must match; capacity, compression, stack and n-step may differ
        (with equal capacity and compression the sampler continues exactly as saved).
        """
        path = os.fspath(path)
        manifest = _read_manifest(path)
        self._check_compatible(manifest, path)
        data_path = os.path.join(path, manifest["data"])
        _verify_file(data_path, manifest)
        fresh = type(self)(**self.config())
        fresh._load_arrow(data_path, manifest)
        self.__dict__.update(fresh.__dict__)

    def _check_compatible(self, manifest: dict[str, Any], path: str) -> None:
        config = manifest["config"]
        mine = self.config()
        for key in ("frame_shape", "action_shape", "action_dtype"):
            if config.get(key) != mine[key]:
                raise ConfigError(f"saved replay {path} has {key}={config.get(key)}, this replay {mine[key]}")

    def _schema(self, compressed: bool) -> pa.Schema:
        action_type = pa.from_numpy_dtype(self.action_dtype)
        width = max(1, int(np.prod(self.action_shape, dtype=np.int64)))
        frame_type = pa.large_binary() if compressed else pa.binary(self._frame_nbytes)
        return pa.schema(
            [
                ("seq", pa.int64()),
                ("stream", pa.int64()),
                ("frame", frame_type),
                ("action", pa.list_(action_type, width)),
                ("reward", pa.float32()),
                ("terminated", pa.bool_()),
                ("truncated", pa.bool_()),
                ("first", pa.bool_()),
            ],
            metadata={"format": FORMAT},
        )

    def _write_arrow(self, file_path: str) -> int:
        schema = self._schema(self.compress)
        with pa.OSFile(file_path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for start in range(self._oldest, self._next_seq, SAVE_CHUNK):
                seqs = np.arange(start, min(start + SAVE_CHUNK, self._next_seq), dtype=np.int64)
                writer.write_batch(self._record_batch(seqs % self.capacity, schema))
        return self.num_entries

    def _record_batch(self, slots: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
        n = slots.size
        width = schema.field("action").type.list_size
        actions = np.ascontiguousarray(self._action[slots]).reshape(n * width)
        columns = [
            pa.array(self._seq[slots]),
            pa.array(self._stream[slots]),
            self._frame_column(slots),
            pa.FixedSizeListArray.from_arrays(pa.array(actions), width),
            pa.array(self._reward[slots]),
            pa.array(self._terminated[slots]),
            pa.array(self._truncated[slots]),
            pa.array(self._first[slots]),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def _frame_column(self, slots: np.ndarray) -> pa.Array:
        n = slots.size
        if not self.compress:
            frames = np.ascontiguousarray(self._frames[slots])
            return pa.FixedSizeBinaryArray.from_buffers(pa.binary(self._frame_nbytes), n, [None, pa.py_buffer(frames)])
        lengths = self._length[slots].astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arena = memoryview(self._arena)
        data = b"".join(arena[lo : lo + m] for lo, m in zip(self._offset[slots].tolist(), lengths.tolist()))
        return pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])

    def _load_arrow(self, data_path: str, manifest: dict[str, Any]) -> None:
        saved_compressed = bool(manifest["config"]["compress"])
        expected = self._schema(saved_compressed)
        try:
            reader = pa.ipc.open_file(pa.memory_map(data_path, "r"))
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptReplayError(f"saved replay {data_path} is not a readable Arrow file: {exc}") from exc
        if not reader.schema.remove_metadata().equals(expected.remove_metadata()):
            raise CorruptReplayError(f"saved replay {data_path} has schema {reader.schema}, expected {expected}")
        state = manifest["state"]
        self._oldest = self._next_seq = int(state["oldest"])
        rows = 0
        for i in range(reader.num_record_batches):
            rows += self._load_batch(reader.get_batch(i), saved_compressed, data_path)
        if rows != manifest["rows"] or self._next_seq != int(state["next_seq"]):
            raise CorruptReplayError(
                f"saved replay {data_path} holds {rows} entries ending at seq {self._next_seq}; "
                f"the manifest says {manifest['rows']} ending at {state['next_seq']}"
            )
        self.inserts, self.samples = int(state["inserts"]), int(state["samples"])
        self._rng.bit_generator.state = state["rng"]

    def _load_batch(self, batch: pa.RecordBatch, saved_compressed: bool, data_path: str) -> int:
        n = len(batch)
        seqs = batch.column("seq").to_numpy()
        if n and (seqs[0] != self._next_seq or np.any(np.diff(seqs) != 1)):
            raise CorruptReplayError(f"saved replay {data_path}: entry sequence numbers are not contiguous")
        actions = batch.column("action").flatten().to_numpy().reshape(n, *self.action_shape)
        streams = batch.column("stream").to_numpy().tolist()
        rewards = batch.column("reward").to_numpy().tolist()
        terminated, truncated, first = (
            batch.column(k).to_numpy(zero_copy_only=False).tolist() for k in ("terminated", "truncated", "first")
        )
        frames = self._saved_frames(batch.column("frame"), saved_compressed)
        for i in range(n):
            frame = self._convert_frame(frames[i], saved_compressed)
            self._insert(streams[i], frame, actions[i], rewards[i], terminated[i], truncated[i], first[i])
        return n

    def _saved_frames(self, column: pa.Array, saved_compressed: bool) -> Any:
        """Zero-copy views of a saved frame column: raw frames as an array, blobs as memoryview slices."""
        n, start = len(column), column.offset
        if not saved_compressed:
            flat = np.frombuffer(column.buffers()[1], np.uint8)
            return flat[start * self._frame_nbytes : (start + n) * self._frame_nbytes].reshape(n, *self.frame_shape)
        offsets = np.frombuffer(column.buffers()[1], np.int64)[start : start + n + 1].tolist()
        data = memoryview(column.buffers()[2])
        return [data[offsets[i] : offsets[i + 1]] for i in range(n)]

    def _convert_frame(self, frame: Any, saved_compressed: bool) -> Any:
        """A saved frame in the form `_insert` takes for this replay's compression setting."""
        if saved_compressed:
            if self.compress:
                return frame
            raw = lz4.block.decompress(frame, uncompressed_size=self._frame_nbytes)
            return np.frombuffer(raw, np.uint8).reshape(self.frame_shape)
        return self._compress(frame) if self.compress else frame


def _file_digest(path: str) -> tuple[str, int]:
    return sha256_file(path), os.path.getsize(path)


def _read_manifest(path: str) -> dict[str, Any]:
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CorruptReplayError(f"no saved replay in {path}: {MANIFEST} is missing")
    try:
        with open(manifest_path, "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise CorruptReplayError(f"saved replay manifest {manifest_path} is unreadable: {exc}") from exc
    required = ("format", "data", "bytes", "sha256", "rows", "config", "state")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise CorruptReplayError(f"saved replay manifest {manifest_path} lacks fields {required}")
    if manifest["format"] != FORMAT:
        raise CorruptReplayError(f"saved replay {path} has format {manifest['format']!r}, expected {FORMAT!r}")
    return manifest


def _verify_file(data_path: str, manifest: dict[str, Any]) -> None:
    if not os.path.isfile(data_path):
        raise CorruptReplayError(f"saved replay data {data_path} is missing")
    size = os.path.getsize(data_path)
    if size != manifest["bytes"]:
        raise CorruptReplayError(
            f"saved replay data {data_path} is {size} bytes, the manifest says {manifest['bytes']} (truncated?)"
        )
    digest, _ = _file_digest(data_path)
    if digest != manifest["sha256"]:
        raise CorruptReplayError(f"saved replay data {data_path} fails its sha256 check (corrupted)")
