"""`distracer average`: the networks of several checkpoints of a run averaged into one checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_evaluate import make_checkpoint, run_cli

from distracer.averaging import average_checkpoints, checkpoints_to_average
from distracer.checkpoint import MANIFEST, STATE_FILE, learner_from_checkpoint, load_checkpoint, save_checkpoint
from distracer.errors import ConfigError


def three_checkpoints(root: Path, algo: str) -> list[Path]:
    """Three checkpoints of one run (seed 1) at steps 10-30 whose networks differ (noise added, as training would)."""
    paths = []
    for k in (1, 2, 3):
        path = make_checkpoint(root, algo, step=10 * k)
        ckpt = load_checkpoint(path)
        noise = torch.Generator().manual_seed(k)
        for state in ckpt.learner_state["modules"].values():
            for value in state.values() if "param_groups" not in state else ():
                if torch.is_floating_point(value):
                    value.add_(0.01 * k * torch.randn(value.shape, generator=noise))
        shutil.rmtree(path)
        paths.append(save_checkpoint(root / "checkpoints", ckpt.learner_state, ckpt.state, 10 * k))
    return paths


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac_drq"])
def test_each_network_is_the_mean_and_the_rest_is_the_newest(tmp_path, algo):
    paths = three_checkpoints(tmp_path / "run", algo)
    out = average_checkpoints(list(reversed(paths)), tmp_path / "avg")  # input order does not matter

    inputs = [load_checkpoint(p).learner_state["modules"] for p in paths]
    averaged = load_checkpoint(out)
    modules = averaged.learner_state["modules"]
    networks = [name for name, state in modules.items() if "param_groups" not in state]
    assert networks
    for name in networks:
        for key, value in modules[name].items():
            if torch.is_floating_point(value):
                expected = torch.stack([m[name][key] for m in inputs]).mean(0)
                torch.testing.assert_close(value, expected, msg=f"{name}.{key}")
    differs = [name for name in networks for k, v in inputs[0][name].items()
               if torch.is_floating_point(v) and not torch.equal(v, inputs[1][name][k])]
    assert differs, "the inputs' weights must differ for the test to mean much"
    optimisers = [name for name in modules if name not in networks]
    for name in optimisers:  # not averaged: the newest input's
        assert modules[name]["param_groups"] == inputs[-1][name]["param_groups"]
    assert out.name == paths[-1].name and averaged.state["counters"]["env_steps"] == 30
    assert averaged.state["averaged_from"] == [str(p) for p in paths]
    learner, config, _ = learner_from_checkpoint(out)  # loads as any checkpoint does
    assert config.algo == algo


def test_the_cli_averages_a_runs_last_checkpoints_and_evaluate_reads_the_result(tmp_path):
    paths = three_checkpoints(tmp_path / "run", "ppo")
    done = run_cli("average", str(tmp_path / "run"), "--last", "2", "--out", str(tmp_path / "avg"))
    assert done.returncode == 0, done.stderr
    assert "averaged 2 checkpoints" in done.stdout
    [written] = sorted((tmp_path / "avg").iterdir())
    state = json.loads((written / STATE_FILE).read_text())
    assert state["averaged_from"] == [str(p) for p in paths[1:]]
    scored = run_cli("evaluate", "--checkpoint", str(written), "--episodes", "1", "--max-steps", "5",
                     "--workers", "1")
    assert scored.returncode == 0, scored.stderr


def test_bad_inputs_are_one_line_before_anything_is_written(tmp_path):
    ppo = three_checkpoints(tmp_path / "ppo", "ppo")
    dqn = make_checkpoint(tmp_path / "dqn", "dqn", step=40)
    wide = make_checkpoint(tmp_path / "wide", "ppo", "env.frame_stack=3", step=50)
    out = tmp_path / "avg"
    with pytest.raises(ConfigError, match="2 or more checkpoints, got 1"):
        checkpoints_to_average([ppo[0]], None)
    with pytest.raises(ConfigError, match="--last takes one run directory"):
        checkpoints_to_average(ppo, 2)
    with pytest.raises(ConfigError, match="holds 3 checkpoint.*asks for 4"):
        checkpoints_to_average([tmp_path / "ppo"], 4)
    with pytest.raises(ConfigError, match="--last must be 2 or more"):
        checkpoints_to_average([tmp_path / "ppo"], 1)
    other_seed = make_checkpoint(tmp_path / "seed2", "ppo", step=60, seed=2)
    with pytest.raises(ConfigError, match="is a ppo checkpoint of seed 1.*is dqn, seed 1: only one run"):
        average_checkpoints([ppo[0], dqn], out)
    with pytest.raises(ConfigError, match="seed 1.*seed 2: only one run"):
        average_checkpoints([ppo[0], other_seed], out)
    with pytest.raises(ConfigError, match="given twice"):
        average_checkpoints([ppo[2], tmp_path / "ppo"], out)  # a run directory is its newest checkpoint
    for run_own in (tmp_path / "ppo", tmp_path / "ppo" / "checkpoints"):
        with pytest.raises(ConfigError, match="run's own directory"):
            average_checkpoints(ppo[:2], run_own)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="--out .* is not writable"):
        average_checkpoints(ppo[:2], a_file / "sub")
    with pytest.raises(ConfigError, match="is not a directory"):
        checkpoints_to_average([a_file], 2)
    with pytest.raises(ConfigError, match="different policy networks"):
        average_checkpoints([ppo[0], wide], out)
    (ppo[1] / MANIFEST).unlink()
    with pytest.raises(ConfigError):
        average_checkpoints([ppo[0], ppo[1]], out)
    assert not out.exists()
    bad = run_cli("average", str(ppo[0]), "--out", str(out))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "2 or more checkpoints" in bad.stderr
