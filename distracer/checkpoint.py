"""The one checkpoint format of distracer: a directory written atomically and verified on load.

    ckpt_000000123456/
        learner.pt      torch.save of the learner's state_dict (tensors and plain values only)
        state.json      counters, driver RNG, the full config, format version
        replay/         replay shards (optional, Arrow IPC)
        MANIFEST.json   sha256 of every file above; written last

A checkpoint is built in a temporary sibling directory and renamed into place, so a run killed
mid-write leaves either the previous checkpoint or the new one, never half of one. Loading checks the
manifest and every checksum, and reads `learner.pt` with `weights_only=True`: no pickled code runs.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distracer.atomic import TMP_MARK, fsync_dir, fsync_tree, sha256_file
from distracer.errors import ConfigError

FORMAT = "distracer-checkpoint"
VERSION = 1
MANIFEST = "MANIFEST.json"
LEARNER_FILE = "learner.pt"
STATE_FILE = "state.json"
PREFIX = "ckpt_"
# A checkpoint is written as `.<name>.tmp-<pid>-<ns>` (atomic.TMP_MARK) beside its final place, then renamed.


@dataclass
class Checkpoint:
    """A loaded checkpoint: the learner's state and the driver's counters and config."""

    path: Path
    learner_state: dict[str, Any]
    state: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.state["config"]

    @property
    def replay_dir(self) -> Path | None:
        replay = self.path / "replay"
        return replay if replay.is_dir() else None


def write_manifest(directory: str | Path) -> dict[str, Any]:
    """Write `directory`'s MANIFEST.json: the sha256 of every other file in it (what seals a checkpoint)."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = {"format": FORMAT, "version": VERSION, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def save_checkpoint(
    ckpt_root: str | Path,
    learner_state: dict[str, Any],
    state: dict[str, Any],
    step: int,
    write_replay: Any = None,
    keep: int | None = None,
) -> Path:
    """Write checkpoint `ckpt_<step>` under `ckpt_root` atomically; returns its path.

    `write_replay(dir)` (optional) fills the replay/ subdirectory before the manifest is sealed.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _checkpoint_name(root, step)
    tmp = root / f".{final.name}{TMP_MARK}{os.getpid()}-{time.monotonic_ns()}"
    try:
        tmp.mkdir()
        torch.save(learner_state, tmp / LEARNER_FILE)
        # The writer stamps its own format, also over a state read back from an older checkpoint.
        (tmp / STATE_FILE).write_text(json.dumps({**state, "format": FORMAT, "version": VERSION}, indent=1))
        if write_replay is not None:
            (tmp / "replay").mkdir()
            write_replay(tmp / "replay")
        write_manifest(tmp)
        fsync_tree(tmp)
        os.replace(tmp, final)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"checkpoint {str(final)!r} could not be written ({exc.strerror or exc}); the previous "
                          "checkpoint is intact") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        prune_checkpoints(root, keep)
    return final


def _checkpoint_name(root: Path, step: int) -> str:
    """`ckpt_<step>`, or `ckpt_<step>_<n>` past every checkpoint already at that step: a sealed checkpoint is
    never rewritten, and names keep sorting oldest first."""
    base = f"{PREFIX}{step:012d}"
    taken = [p.name[len(base):] for p in root.glob(f"{base}*")]
    suffixes = [0 if t == "" else int(t[1:]) for t in taken if t == "" or (t[:1] == "_" and t[1:].isdigit())]
    return base if not suffixes else f"{base}_{max(suffixes) + 1}"


MIN_FREE_BYTES = 200 * 1024**2  # a few checkpoints' worth; below it a run would die at its first save


def check_writable_dir(path: str | Path, what: str = "run_dir") -> Path:
    """Create `path` if needed and prove it takes a file, before anything starts: one line for a read-only,
    missing-permission or (nearly) full disk instead of a traceback at the first checkpoint."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not writable ({exc.strerror or exc})") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(f"{what} {str(path)!r}: only {free / 1024**2:.0f} MB free on its disk (No space left "
                          f"soon); checkpoints need at least {MIN_FREE_BYTES // 1024**2} MB")
    return path


def sealed_checkpoint_around(path: str | Path) -> Path | None:
    """The sealed checkpoint that `path` is, or lies inside (a directory whose MANIFEST.json is this format's),
    else None; `path` need not exist yet."""
    here = Path(path).resolve()
    for candidate in (here, *here.parents):
        manifest = candidate / MANIFEST
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text()).get("format") == FORMAT:
                    return candidate
            except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                return candidate  # a damaged manifest is still a checkpoint's: never write into it
    return None


def refuse_inside_checkpoint(path: str | Path, flag: str) -> None:
    """ConfigError when `path` (an output of `flag`) is a sealed checkpoint or inside one: sealed checkpoints never
    change (their manifest would no longer match, and `--resume auto` or `evaluate` would read the output)."""
    sealed = sealed_checkpoint_around(path)
    if sealed is not None:
        raise ConfigError(f"{flag} {str(path)!r} is inside the sealed checkpoint {str(sealed)!r}, and sealed "
                          "checkpoints never change; write it elsewhere")


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Sealed checkpoints under `ckpt_root`, oldest first (temporary directories are ignored)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def prune_checkpoints(ckpt_root: str | Path, keep: int) -> None:
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def unfinished_writes(ckpt_root: str | Path) -> list[Path]:
    """Temporary directories of checkpoint writes under `ckpt_root` (`.ckpt_<step>.tmp-<pid>-<ns>`)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f".{PREFIX}") and TMP_MARK in p.name)


def remove_unfinished_writes(ckpt_root: str | Path) -> list[Path]:
    """Delete the temporary directories that killed writes left behind (their writer's pid is gone); returns
    them. A write still in progress (its pid alive, e.g. another run on this directory) is left alone."""
    removed = []
    for tmp in unfinished_writes(ckpt_root):
        pid = tmp.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def newest_intact(ckpt_root: str | Path) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest sealed checkpoint under `ckpt_root` that verifies and loads (loaded), and the (path, one-line
    reason) of every newer one that does not, newest first. Walks back from the newest: reads only what it must."""
    damaged: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            return load_checkpoint(path), damaged
        except ConfigError as exc:
            damaged.append((path, str(exc)))
    return None, damaged


def find_resume_checkpoint(run_dir: str | Path, fallback: bool) -> tuple[Path | None, list[str]]:
    """The path of `resume_point`'s checkpoint, and its notes."""
    found, notes = resume_point(run_dir, fallback)
    return (found.path if found is not None else None), notes


def resume_point(run_dir: str | Path, fallback: bool) -> tuple[Checkpoint | None, list[str]]:
    """What `--resume auto` resumes from in `run_dir`: (the checkpoint, verified and loaded once, or None for a
    fresh start; notes to print).

    Never starts from scratch silently where the directory holds checkpoint material: an unusable newest
    checkpoint is a one-line ConfigError naming the newest intact one (taken instead when `fallback`), and a
    directory with only unfinished writes or only damaged checkpoints is said to start from step 0 or refused.
    """
    root = Path(run_dir) / "checkpoints"
    newest, damaged = newest_intact(root)
    notes = []
    if damaged:
        first_path, reason = damaged[0]
        if newest is None:
            raise ConfigError(f"--resume auto: no checkpoint in {str(root)!r} loads (newest: {reason}); "
                              "remove them or pass --resume with a checkpoint to start from")
        if not fallback:
            raise ConfigError(f"--resume auto: the newest checkpoint is damaged ({reason}); the newest intact one is "
                              f"{str(newest.path)!r}: pass --resume {newest.path}, or set "
                              "checkpoint.resume_fallback=true")
        notes.append(f"distracer: warning: skipped {len(damaged)} damaged checkpoint(s), newest {first_path.name} "
                     f"({reason}); resuming from {newest.path.name}")
    elif newest is None and unfinished_writes(root):
        notes.append(f"distracer: {str(root)!r} holds only unfinished checkpoint writes (a run killed while "
                     "writing its first checkpoint); starting from step 0")
    return newest, notes


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check the manifest and every checksum; return the manifest or raise a one-line ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_dir():
        raise ConfigError(f"checkpoint {str(path)!r} is a file, not a distracer checkpoint directory "
                          "(for an SB3 .zip use `distracer evaluate --trust-pickle`)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} has no {MANIFEST}: incomplete or not a distracer checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"checkpoint {str(path)!r}: {MANIFEST} is corrupt") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise ConfigError(f"checkpoint {str(path)!r}: {MANIFEST} is corrupt (not a {FORMAT} manifest)")
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {str(path)!r} is not a {FORMAT} (format={manifest.get('format')!r})")
    if not isinstance(manifest.get("version", 0), int) or manifest.get("version", 0) > VERSION:
        raise ConfigError(f"checkpoint {str(path)!r} has format version {manifest['version']}; "
                          f"this distracer reads up to {VERSION}")
    for rel, digest in manifest.get("files", {}).items():
        file = path / rel
        if not file.is_file():
            raise ConfigError(f"checkpoint {str(path)!r} is missing {rel}")
        if sha256_file(file) != digest:
            raise ConfigError(f"checkpoint {str(path)!r}: {rel} is corrupt (checksum mismatch)")
    return manifest


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"checkpoint {str(path)!r}: {STATE_FILE} is not valid JSON ({exc})"[:300]) from None
    if not isinstance(state, dict) or not isinstance(state.get("counters", {}), dict):
        raise ConfigError(f"checkpoint {str(path)!r}: {STATE_FILE} does not hold a distracer state (counters, config)")
    return state


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Verify and load a checkpoint directory (or a run directory: its newest checkpoint)."""
    path = resolve_checkpoint(path)
    verify_checkpoint(path)
    state = _read_state(path)
    try:
        learner_state = torch.load(path / LEARNER_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; the user needs one line
        raise ConfigError(f"checkpoint {str(path)!r}: {LEARNER_FILE} cannot be loaded "
                          f"({type(exc).__name__}: {_first_reason(exc)})") from None
    return Checkpoint(path, learner_state, state)


def learner_from_checkpoint(path: str | Path) -> tuple[Any, Any, Any]:
    """(learner on CPU with the checkpoint's weights, its TrainConfig, the Checkpoint) for a distracer checkpoint."""
    from distracer.algos import make_learner
    from distracer.algos.base import DeviceConfig
    from distracer.config import config_from_dict
    from distracer.envs import env_spaces

    fmt, found = detect_format(path)
    if fmt != "distracer":
        raise ConfigError(f"{str(path)!r} is an SB3 .zip, not a distracer checkpoint")
    ckpt = load_checkpoint(found)  # verifies the manifest and checksums; weights_only torch.load
    data = copy.deepcopy(ckpt.config)
    # Trained on a GPU, evaluated anywhere: the saved device must not stop a CPU-only machine.
    data.setdefault("learner", {}).update({"device": "cpu", "precision": "fp32"})
    config = config_from_dict(data)
    obs_shape, action_spec = env_spaces(config.env)
    learner = make_learner(config.algo, config.algo_config, obs_shape, action_spec, DeviceConfig("cpu"), config.seed)
    try:
        learner.load_state_dict(ckpt.learner_state)
    except ConfigError:
        raise
    except Exception as exc:  # shape or key mismatches surface as several torch exception types
        raise ConfigError(f"checkpoint {str(ckpt.path)!r}: its weights do not fit a {config.algo} learner built "
                          f"from its own config ({type(exc).__name__})") from None
    return learner, config, ckpt


def _first_reason(exc: BaseException) -> str:
    """The line of an exception that says why: for torch's weights_only refusal, the global it refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    refused = [line for line in lines if "Unsupported global" in line or "GLOBAL" in line]
    return (refused or lines or ["no reason given"])[0][:240]


def checkpoints_in(path: str | Path) -> list[Path]:
    """The sealed checkpoints of a run dir or a checkpoints dir, oldest first ([] when it holds none)."""
    path = Path(path)
    for root in (path, path / "checkpoints"):
        found = list_checkpoints(root)
        if found:
            return found
    return []


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or the newest one inside a run dir / checkpoints dir."""
    path = Path(path)
    if (path / MANIFEST).exists() or not path.is_dir():
        return path
    found = checkpoints_in(path)
    return found[-1] if found else path


# ----------------------------------------------------------------------------------------------------
# Format detection (for `distracer evaluate` / `export`): nothing here unpickles or loads tensors.

SB3_ZIP_MEMBERS = ("data", "policy.pth")
_SKIP_DIRS = {"replay", "tb", "__pycache__"}


def detect_format(path: str | Path, max_depth: int = 4) -> tuple[str, Path]:
    """What `path` holds: ("distracer", checkpoint dir) or ("sb3", .zip file); else a one-line ConfigError.

    A directory may be a checkpoint, a run dir (its newest checkpoint), or any folder holding
    checkpoints a few levels down, as Tune's `checkpoint_00000N/` and trial dirs do: the newest
    checkpoint wins, but checkpoints of several different runs (a Tune experiment dir) are refused
    as ambiguous. Checksums are not checked here: `load_checkpoint` does that.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file():
        return "sb3", _check_sb3_zip(path)
    if (path / MANIFEST).is_file():
        return "distracer", path
    found = _find_manifests(path, max_depth)
    if not found:
        if (path / LEARNER_FILE).exists() or (path / STATE_FILE).exists():
            verify_checkpoint(path)  # raises its one-line reason (e.g. no manifest: incomplete)
        raise ConfigError(f"{str(path)!r} holds no distracer checkpoint (no {MANIFEST} within {max_depth} levels)")
    runs = {_run_identity(p) for p in found}
    if len(runs) > 1:
        raise ConfigError(f"{str(path)!r} holds checkpoints of {len(runs)} different runs (e.g. a Tune experiment); "
                          f"pass one trial's directory or checkpoint, e.g. {str(found[-1])!r}")
    return "distracer", max(found, key=_checkpoint_order)


def _check_sb3_zip(path: Path) -> Path:
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"checkpoint {str(path)!r} is a file but neither an SB3 .zip nor a distracer "
                          "checkpoint (those are directories)")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    missing = [m for m in SB3_ZIP_MEMBERS if m not in names]
    if missing:
        raise ConfigError(f"{str(path)!r} is neither a Stable-Baselines3 model .zip (it lacks {', '.join(missing)}) "
                          "nor a distracer checkpoint directory")
    return path


def _find_manifests(root: Path, max_depth: int) -> list[Path]:
    """Checkpoint dirs (holding a MANIFEST) under `root`, at most `max_depth` levels down."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if MANIFEST in filenames and not Path(dirpath).name.startswith("."):  # skip half-written temp dirs
            found.append(Path(dirpath))
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".") and depth < max_depth]
    return sorted(found)


def _run_identity(ckpt: Path) -> str:
    """Checkpoints of one run share algo, seed and run_dir; a Tune search's trials differ in at least one."""
    try:
        config = json.loads((ckpt / STATE_FILE).read_text()).get("config", {})
        return json.dumps([config.get("algo"), config.get("seed"), config.get("run_dir")])
    except (OSError, json.JSONDecodeError, AttributeError):
        return str(ckpt)  # unreadable: its own group; load_checkpoint will name what is wrong


def _checkpoint_order(ckpt: Path) -> tuple[int, float]:
    """Newest by env step (state.json's counters; Tune's copies are named checkpoint_N), then by mtime."""
    try:
        step = int(json.loads((ckpt / STATE_FILE).read_text())["counters"]["env_steps"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        name = ckpt.name[len(PREFIX):] if ckpt.name.startswith(PREFIX) else ""
        step = int(name) if name.isdigit() else -1
    return step, ckpt.stat().st_mtime
