"""`distracer plot`: learning curves from metrics.jsonl, several seeds as mean and spread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distracer.errors import ConfigError
from distracer.plot import find_metrics, load_run, mean_and_spread, plot_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, algo: str, steps: list[int], scores: list[float], seconds_per_step: float,
              torn_tail: bool = False) -> Path:
    """A run dir as `distracer train` leaves it: config.json and one metrics.jsonl record per evaluation."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"algo": algo}))
    lines = [json.dumps({"env_steps": s, "wall_seconds": s * seconds_per_step, "eval_return_mean": m,
                         "eval_return_std": 25.0, "returns": [m - 25, m + 25], "seeds": [1, 2]})
             for s, m in zip(steps, scores)]
    text = "\n".join(lines) + "\n"
    if torn_tail:  # a run killed while appending a record
        text += '{"env_steps": 99999, "wall_sec'
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def test_two_seeds_are_averaged_on_a_common_grid(tmp_path):
    a = write_run(tmp_path / "seed1", "sac_drq", [0, 100, 200, 300], [0.0, 100.0, 200.0, 300.0], 0.01)
    b = write_run(tmp_path / "seed2", "sac_drq", [0, 150, 250], [100.0, 250.0, 350.0], 0.02, torn_tail=True)
    runs = [load_run(find_metrics(a)[0]), load_run(find_metrics(b)[0])]
    assert len(runs[1].env_steps) == 3  # the torn last line is skipped, not fatal
    grid, mean, std = mean_and_spread(runs, "env_steps")
    assert grid[0] == 0 and grid[-1] == 250  # only where every run has data: no extrapolation
    # run a: y = x; run b: y = 100 + x between its points -> mean 50 + x, std 50 everywhere.
    np.testing.assert_allclose(mean, 50 + grid)
    np.testing.assert_allclose(std, 50.0)


def test_plot_writes_a_png_from_two_runs_and_a_single_one(tmp_path):
    steps = list(range(0, 1_000_001, 50_000))
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        curve = 950 * (1 - np.exp(-np.array(steps) / 250_000)) + rng.normal(0, 30, len(steps))
        write_run(tmp_path / "runs" / f"sac_s{seed}", "sac_drq", steps, curve.tolist(), 0.004 * seed)
    ppo = write_run(tmp_path / "ppo_s1", "ppo", steps, (700 * np.array(steps) / 1e6).tolist(), 0.002)
    out = plot_runs([tmp_path / "runs", ppo], tmp_path / "curves.png")  # a dir of runs, and one run
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000


def test_plot_refuses_paths_without_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no metrics.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="does not exist"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    run = write_run(tmp_path / "r", "dqn", [0, 10], [1.0, 2.0], 0.1)
    with pytest.raises(ConfigError, match="does not exist"):
        plot_runs([run], tmp_path / "no" / "dir" / "x.png")


def test_plot_command_exit_codes(tmp_path, capsys):
    from distracer.cli import main

    run = write_run(tmp_path / "r", "dqn", [0, 10, 20], [1.0, 2.0, 3.0], 0.1)
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("distracer: error:")
