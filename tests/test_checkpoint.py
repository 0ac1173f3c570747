"""The one checkpoint format: atomic writes, verification on load, pruning, and safe loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

from distracer.checkpoint import (
    MANIFEST,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from distracer.errors import ConfigError

STATE = {"algo": "dqn", "config": {"algo": "dqn"}, "counters": {"env_steps": 5}}


def learner_state() -> dict:
    return {"algo": "dqn", "modules": {"net": {"w": torch.arange(6.0)}}, "num_updates": 3}


def test_round_trip_and_newest(tmp_path):
    save_checkpoint(tmp_path, learner_state(), STATE, step=5)
    path = save_checkpoint(tmp_path, learner_state(), STATE, step=10)
    loaded = load_checkpoint(tmp_path)  # a directory of checkpoints resolves to its newest
    assert loaded.path == path
    assert torch.equal(loaded.learner_state["modules"]["net"]["w"], torch.arange(6.0))
    assert loaded.state["counters"]["env_steps"] == 5


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def broken_replay(_directory):
        raise OSError("disk full")

    with pytest.raises(ConfigError, match="could not be written \\(disk full\\)"):
        save_checkpoint(tmp_path, learner_state(), STATE, step=1, write_replay=broken_replay)
    assert os.listdir(tmp_path) == []  # no half checkpoint, no temp dir


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "drop_manifest", "drop_file"])
def test_damage_is_detected_in_one_line(tmp_path, damage):
    path = save_checkpoint(tmp_path, learner_state(), STATE, step=1)
    target = path / "learner.pt"
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:50])
    elif damage == "drop_manifest":
        (path / MANIFEST).unlink()
    else:
        target.unlink()
    with pytest.raises(ConfigError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_code_in_learner_file_is_never_executed(tmp_path):
    path = save_checkpoint(tmp_path, learner_state(), STATE, step=1)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"evil": Evil()}, path / "learner.pt")
    # Re-seal the manifest so only weights_only loading stands between the file and the unpickler.
    manifest = json.loads((path / MANIFEST).read_text())
    import hashlib

    manifest["files"]["learner.pt"] = hashlib.sha256((path / "learner.pt").read_bytes()).hexdigest()
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_checkpoint(path)


def test_pruning_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, learner_state(), STATE, step=step, keep=2)
    assert [p.name[-1] for p in list_checkpoints(tmp_path)] == ["3", "4"]


def test_missing_path_and_plain_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        verify_checkpoint(tmp_path / "nope")
    (tmp_path / "model.zip").write_bytes(b"PK")
    with pytest.raises(ConfigError, match="not a distracer checkpoint directory"):
        verify_checkpoint(resolve_checkpoint(tmp_path / "model.zip"))


def test_a_learner_file_weights_only_refuses_names_the_refused_global(tmp_path):
    import argparse
    import json

    import torch

    from distracer.checkpoint import MANIFEST, load_checkpoint, save_checkpoint, sha256_file
    from distracer.errors import ConfigError

    ckpt = save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"counters": {}}, 1)
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(x=1)}, ckpt / "learner.pt")
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"]["learner.pt"] = sha256_file(ckpt / "learner.pt")  # re-sealed: only the content is bad
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"learner.pt cannot be loaded \(UnpicklingError: .*argparse.Namespace"):
        load_checkpoint(ckpt)


def test_a_sealed_checkpoint_is_never_rewritten(tmp_path):
    # A resume (or the final checkpoint after a timed one) at the same step writes a new checkpoint beside it.
    import torch

    from distracer.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint

    first = save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {"counters": {"num_updates": 480}}, 2000)
    before = (first / "state.json").read_bytes()
    second = save_checkpoint(tmp_path, {"w": torch.ones(1)}, {"counters": {"num_updates": 484}}, 2000, keep=1)
    assert second != first and second.name == first.name + "_1"
    assert list_checkpoints(tmp_path) == [second]  # pruning keeps the newest, sealed before the older went
    assert resolve_checkpoint(tmp_path) == second
    assert load_checkpoint(second).state["counters"]["num_updates"] == 484
    third = save_checkpoint(tmp_path, {"w": torch.ones(1)}, {"counters": {}}, 2000, keep=5)
    assert third.name == first.name + "_2"
    assert before  # the first was read intact before pruning removed it


def test_a_resealed_state_json_that_is_not_json_is_one_line(tmp_path):
    import json

    import torch

    from distracer.checkpoint import MANIFEST, load_checkpoint, save_checkpoint, sha256_file
    from distracer.errors import ConfigError

    ckpt = save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {"counters": {}}, 1)
    (ckpt / "state.json").write_text("{ not json")
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"]["state.json"] = sha256_file(ckpt / "state.json")
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"state.json is not valid JSON"):
        load_checkpoint(ckpt)


def test_unwritable_or_full_run_dirs_are_one_line_before_anything_starts(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from distracer.checkpoint import check_writable_dir
    from distracer.errors import ConfigError

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"run_dir '.*a_file/run' is not writable"):
        check_writable_dir(blocker / "run")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ConfigError, match=r"only 1 MB free on its disk \(No space left soon\)"):
        check_writable_dir(tmp_path / "run")


def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import torch

    from distracer.checkpoint import list_checkpoints, save_checkpoint
    from distracer.errors import ConfigError

    first = save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {"counters": {}}, 1)

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ConfigError, match="could not be written \\(No space left on device\\); the previous"):
        save_checkpoint(tmp_path, {"w": torch.zeros(1)}, {"counters": {}}, 2)
    assert list_checkpoints(tmp_path) == [first]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_outputs_inside_a_sealed_checkpoint_are_refused_by_every_command(tmp_path):
    """average --out, evaluate --json/--video, export --out and plot --out: a path equal to, or inside, a sealed
    checkpoint stops in one line before anything is written (sealed checkpoints never change)."""
    from test_evaluate import make_checkpoint, run_cli

    from distracer.averaging import check_out_dir
    from distracer.checkpoint import refuse_inside_checkpoint, sealed_checkpoint_around
    from distracer.evaluate import evaluate_checkpoint
    from distracer.plot import plot_runs
    from distracer.sb3_interop import export_sb3

    ckpt = make_checkpoint(tmp_path / "run", "ppo", step=8)
    before = sorted(p.name for p in ckpt.iterdir())
    assert sealed_checkpoint_around(ckpt / "sub" / "x.json") == ckpt.resolve()
    assert sealed_checkpoint_around(tmp_path / "run" / "elsewhere") is None
    sealed = "is inside the sealed checkpoint"
    with pytest.raises(ConfigError, match=f"--out '{ckpt}' {sealed}"):
        check_out_dir(ckpt, [ckpt])
    with pytest.raises(ConfigError, match=sealed):
        evaluate_checkpoint(ckpt, episodes=1, video_dir=ckpt / "videos", log=lambda _: None)
    with pytest.raises(ConfigError, match=sealed):
        export_sb3(ckpt, ckpt / "model.zip")
    with pytest.raises(ConfigError, match=sealed):
        plot_runs([tmp_path / "run"], ckpt / "curves.png")
    with pytest.raises(ConfigError, match=sealed):
        refuse_inside_checkpoint(ckpt / "report.json", "--json")
    done = run_cli("evaluate", "--checkpoint", str(ckpt), "--episodes", "1", "--json", str(ckpt / "report.json"))
    assert done.returncode == 2 and f"--json '{ckpt / 'report.json'}' {sealed}" in done.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == before
