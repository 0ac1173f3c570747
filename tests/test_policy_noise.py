"""benchmarks/policy_noise.py's scoring: the same tracks deterministic and with the training noise."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import policy_noise  # noqa: E402
from test_evaluate import make_checkpoint  # noqa: E402

from distracer.evaluate import distracer_act_fn, load_for_evaluation  # noqa: E402


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    for step in (64, 128):
        make_checkpoint(root, "ppo", "env.frame_size=64", "env.frame_stack=2", "env.action_repeat=2", step=step)
    return root


def test_noisy_acting_is_seeded_and_differs_from_the_deterministic_policy(ppo_run):
    checkpoint = sorted((ppo_run / "checkpoints").iterdir())[0]
    obs = np.zeros((2, 64, 64), np.uint8)  # 2 stacked 64x64 frames, channel-first
    weights = load_for_evaluation(checkpoint).source.weights
    deterministic = distracer_act_fn(weights)(obs)
    first = [policy_noise.noisy_act_fn(weights, seed=5)(obs) for _ in range(2)]
    other = policy_noise.noisy_act_fn(weights, seed=6)(obs)
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other)
    assert not np.allclose(first[0], deterministic)
    assert np.all(np.abs(first[0]) <= 1.0)


def test_scores_each_checkpoint_on_the_same_tracks_both_ways(ppo_run, capsys):
    checkpoints = sorted((ppo_run / "checkpoints").iterdir())
    rows = policy_noise.score_rows(checkpoints, episodes=2, workers=1, max_steps=3)
    assert [row["checkpoint"] for row in rows] == [p.name for p in checkpoints]
    for row in rows:
        for mode in ("deterministic", "noisy"):
            assert len(row[mode]["returns"]) == 2 and all(np.isfinite(row[mode]["returns"]))
            assert all(missed > 0 for missed in row[mode]["tiles_missed"])  # 3 steps cannot visit a track
    assert rows == policy_noise.score_rows(checkpoints, episodes=2, workers=1, max_steps=3)  # seeded both ways
    policy_noise.print_scores(rows)
    assert capsys.readouterr().out.count("ckpt_") == 2


def test_unknown_checkpoint_name_is_refused(ppo_run):
    with pytest.raises(SystemExit, match="no checkpoint"):
        policy_noise.main([str(ppo_run), "--only", "ckpt_nope"])
