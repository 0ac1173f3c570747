"""Property-based tests (hypothesis): whatever a user writes in a config, and whatever damage a checkpoint takes,
distracer answers with a valid object or one `ConfigError` line, never another exception."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import typing

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distracer.checkpoint import (
    MANIFEST,
    find_resume_checkpoint,
    load_checkpoint,
    remove_unfinished_writes,
    save_checkpoint,
    write_manifest,
)
from distracer.config import TrainConfig, load_config
from distracer.errors import ConfigError


# ----------------------------------------------------------------------------------------------------
# Config validation
def _config_keys() -> list[str]:
    """Every dotted key of TrainConfig (sections one level deep), e.g. 'ppo.learning_rate', 'resources.num_workers'."""
    keys = []
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            keys += [f"{f.name}.{sub.name}" for sub in dataclasses.fields(section)]
        else:
            keys.append(f.name)
    return keys


KEYS = _config_keys()
VALUES = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "null", "~", "[]", "[1, 2]", "{}", "{a: 1}", ".nan", "-.inf", "1e-3", "3e9",
                     "auto", "cpu", "ppo", "dqn", "'x'", "0", "-1", "1GB", "200MB", "first", "last", ""]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
@example(overrides=[("algo", "[]")])  # found by hypothesis: a list algo reached the when_algo lookup as a key
@example(overrides=[("algo", "{a: 1}")])
def test_any_override_gives_a_valid_config_or_one_config_error_line(overrides):
    items = [f"{key}={value}" for key, value in overrides]
    try:
        config = load_config(None, items)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    config.validate()  # what loaded is valid
    json.dumps(config.to_dict(), default=str)


@pytest.mark.parametrize("algo", [[], ["ppo"], {"a": 1}, 3])
def test_a_saved_config_with_a_non_string_algo_is_one_config_error_line(algo):
    """The dict path (a checkpoint's or a Tune trial's config) goes through the same when_algo lookup."""
    from distracer.config import config_from_dict

    with pytest.raises(ConfigError, match="must be a string"):
        config_from_dict({"algo": algo})


# ----------------------------------------------------------------------------------------------------
# Checkpoint loading
STATE = {"algo": "dqn", "config": {"algo": "dqn"}, "counters": {"env_steps": 5}}
LEARNER = {"algo": "dqn", "modules": {"net": {"w": torch.arange(6.0)}}, "num_updates": 3}


def _reseal(ckpt) -> None:
    """Recompute the manifest's checksums: damage a checksum would not catch (a bug, a bad edit)."""
    write_manifest(ckpt)


DAMAGE = st.fixed_dictionaries({
    "file": st.sampled_from(["learner.pt", "state.json", MANIFEST]),
    "kind": st.sampled_from(["flip", "truncate", "garbage", "delete", "empty"]),
    "where": st.floats(min_value=0, max_value=1),
    "garbage": st.binary(min_size=0, max_size=64),
    "reseal": st.booleans(),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_a_damaged_checkpoint_loads_cleanly_or_gives_one_config_error_line(tmp_path, damage):
    root = tmp_path / "ck"
    shutil.rmtree(root, ignore_errors=True)
    ckpt = save_checkpoint(root, LEARNER, STATE, step=1)
    target = ckpt / damage["file"]
    data = bytearray(target.read_bytes())
    kind = damage["kind"]
    if kind == "flip" and data:
        data[int(damage["where"] * (len(data) - 1))] ^= 0xFF
        target.write_bytes(bytes(data))
    elif kind == "truncate":
        target.write_bytes(bytes(data[: int(damage["where"] * len(data))]))
    elif kind == "garbage":
        target.write_bytes(damage["garbage"])
    elif kind == "empty":
        target.write_bytes(b"")
    else:
        target.unlink()
    if damage["reseal"] and damage["file"] != MANIFEST and (ckpt / MANIFEST).is_file():
        _reseal(ckpt)
    try:
        loaded = load_checkpoint(ckpt)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(loaded.state, dict) and isinstance(loaded.learner_state, dict)


# ----------------------------------------------------------------------------------------------------
# --resume auto
def _run_with_checkpoints(tmp_path, steps=(100, 200, 300)):
    run = tmp_path / "run"
    paths = [save_checkpoint(run / "checkpoints", LEARNER, {**STATE, "counters": {"env_steps": s}}, s)
             for s in steps]
    return run, paths


def test_resume_auto_takes_the_newest_intact_checkpoint(tmp_path):
    run, paths = _run_with_checkpoints(tmp_path)
    assert find_resume_checkpoint(run, fallback=False) == (paths[-1], [])


def test_resume_auto_with_a_damaged_newest_names_the_newest_intact_or_takes_it_when_configured(tmp_path):
    run, paths = _run_with_checkpoints(tmp_path)
    (paths[-1] / "learner.pt").write_bytes(b"damaged")
    with pytest.raises(ConfigError, match=r"newest checkpoint is damaged .*ckpt_000000000200.*resume_fallback"):
        find_resume_checkpoint(run, fallback=False)
    found, notes = find_resume_checkpoint(run, fallback=True)
    assert found == paths[1]
    assert len(notes) == 1 and "skipped 1 damaged" in notes[0] and paths[-1].name in notes[0]


def test_resume_auto_never_starts_from_scratch_silently(tmp_path):
    run, paths = _run_with_checkpoints(tmp_path, steps=(100,))
    (paths[0] / MANIFEST).unlink()
    with pytest.raises(ConfigError, match="no checkpoint in .* loads"):
        find_resume_checkpoint(run, fallback=True)
    shutil.rmtree(paths[0])
    (run / "checkpoints" / ".ckpt_000000000100.tmp-999999999-1").mkdir()  # a write killed before it was sealed
    found, notes = find_resume_checkpoint(run, fallback=False)
    assert found is None and "starting from step 0" in notes[0]
    assert find_resume_checkpoint(tmp_path / "fresh", fallback=False) == (None, [])


def test_unfinished_writes_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / ".ckpt_000000000100.tmp-999999999-1"  # no such pid
    live = tmp_path / f".ckpt_000000000200.tmp-{os.getppid()}-2"  # the test runner's parent is alive
    sealed = save_checkpoint(tmp_path, LEARNER, STATE, step=300)
    dead.mkdir()
    live.mkdir()
    assert remove_unfinished_writes(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and sealed.exists()
