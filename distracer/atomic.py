"""Files written whole or not at all, and their checksums: the one helper set that checkpoints, saved
replays and videos share. A crash leaves the previous file (or none), never half of one."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TMP_MARK = ".tmp-"
"""In the name of every temporary file or directory of an unfinished write (followed by the writer's pid)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks: the checksum every saved file of distracer carries."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomically(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same directory and one os.replace.

    `durable`: fsync the file before the rename and the directory after it, so the new contents survive a
    power loss, not only a crash of this process."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside directory `path` durable (where the platform can open a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the replace is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under `root` (before a directory is renamed into place)."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
