"""benchmarks/run_metrics.py: a run's TensorBoard scalars averaged over spans of env steps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import run_metrics  # noqa: E402


def scalars() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    steps = np.array([100, 200, 300, 400])
    return {"learner/epochs": (steps, np.array([1.0, 3.0, 10.0, 10.0])),
            "train/episode_length": (steps, np.array([1000.0, 400.0, 1000.0, 1000.0]))}


def test_spans_average_each_tag_and_count_episodes_ended_early():
    rows = run_metrics.summarise(scalars(), points=2)
    assert [r["env_steps_to"] for r in rows] == [200.0, 400.0]
    assert [r["epochs"] for r in rows] == [2.0, 10.0]
    assert [r["ended_early"] for r in rows] == [0.5, 0.0]


def test_until_keeps_only_the_first_part_of_a_run():
    rows = run_metrics.summarise(scalars(), points=2, until=300)
    assert [r["env_steps_to"] for r in rows] == [150.0, 300.0]
    assert [r["epochs"] for r in rows] == [1.0, 6.5]


def test_reads_a_real_tensorboard_run_and_refuses_a_bad_until(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, epochs in ((4096, 2.0), (8192, 10.0)):
        writer.add_scalar("learner/epochs", epochs, step)
    writer.close()
    assert run_metrics.main([str(tmp_path), "--points", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "env_steps_to | epochs" and "8,192 | 6" in out
    assert run_metrics.main([str(tmp_path), "--until", "0"]) == 2
    assert "--until must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("points", [0, -1])
def test_bad_points_refused(tmp_path, capsys, points):
    assert run_metrics.main([str(tmp_path), "--points", str(points)]) == 2


def test_shares_of_why_training_episodes_ended_from_the_run_logger(tmp_path, capsys):
    """RunLogger writes one 0/1 scalar per reason for each episode; run_metrics averages them into shares."""
    from distracer.config import load_config
    from distracer.runtime.logger import RunLogger

    logger = RunLogger(tmp_path, load_config([]), bar=False)
    for step, end in ((100, "standstill"), (200, "time_limit"), (300, "off_playfield"), (400, "standstill")):
        logger.episode(500.0, 1000 if end == "time_limit" else 300, end, step)
    logger.close()
    rows = run_metrics.summarise(run_metrics.load_scalars(tmp_path), points=1)
    assert (rows[0]["ended_standstill"], rows[0]["ended_off_playfield"], rows[0]["ended_lap"]) == (0.5, 0.25, 0.0)
    assert rows[0]["ended_early"] == 0.75
