"""The final selection (`distracer.runtime.selection`): the rule, and a real run that ends by keeping its pick."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distracer.runtime.selection import SELECT_SEED_OFFSET, choose, paired_margin, selection_seeds


def test_the_final_checkpoint_stays_unless_beaten_beyond_the_paired_margin():
    final = [900.0, 850.0, 700.0, 910.0]
    noisy_gain = [930.0, 820.0, 760.0, 905.0]  # +15 on average, but the differences spread widely
    steady_gain = [910.0, 861.0, 709.0, 921.0]  # +10 on every track
    assert choose([final, noisy_gain], final=0)[0] == 0
    chosen, margins = choose([final, noisy_gain, steady_gain], final=0)
    assert chosen == 2 and margins[0] == 0.0 and margins[1] > 15 > margins[2]
    # Among candidates that clear their margin, the highest mean; the final's position in the list is free.
    much_better = [950.0, 900.0, 760.0, 960.0]
    assert choose([steady_gain, much_better, final], final=2)[0] == 1


def test_paired_margin_is_z_standard_errors_of_the_differences():
    final, other = [1.0, 2.0, 3.0], [2.0, 2.0, 5.0]  # differences 1, 0, 2: std 1 (ddof 1)
    assert paired_margin(final, other, z=2.0) == pytest.approx(2.0 / np.sqrt(3))
    assert np.isnan(paired_margin([1.0], [5.0]))  # one track: no margin, so no replacement
    assert choose([[1.0], [5.0]], final=0)[0] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(-100, 1000), min_size=2, max_size=2), min_size=2, max_size=12),
       st.integers(0, 3))
def test_a_pick_never_scores_below_the_final_on_the_selection_tracks(tracks, final):
    returns = [list(r) for r in np.asarray(tracks).T]  # 2 candidates x tracks
    final = final % len(returns)
    chosen, _ = choose(returns, final)
    assert np.mean(returns[chosen]) >= np.mean(returns[final])


def test_candidates_are_the_last_checkpoints_and_the_periodic_best_once_per_set_of_weights(tmp_path):
    from distracer.checkpoint import save_checkpoint
    from distracer.runtime.selection import candidates

    def ckpt(where: str, steps: int, updates: int):
        state = {"algo": "ppo", "config": {}, "counters": {"env_steps": steps, "num_updates": updates}}
        return save_checkpoint(tmp_path / where, {"w": torch.zeros(1)}, state, steps)

    first, _, last_trained, final = (ckpt("checkpoints", s, u) for s, u in [(100, 1), (200, 2), (300, 3), (400, 3)])
    # The final rollout, collected under policy lag and never trained on, leaves the 300-step weights as final.
    assert candidates(tmp_path, last=3) == [(tmp_path / "checkpoints" / "ckpt_000000000200", "checkpoint"),
                                            (final, "final")]
    assert last_trained not in [p for p, _ in candidates(tmp_path, last=4)] and first in [
        p for p, _ in candidates(tmp_path, last=4)]
    best = ckpt("best", 150, 1)  # the same weights as `first`, which is among the last four only
    assert [label for _, label in candidates(tmp_path, last=2)] == ["periodic best", "final"]
    assert best not in [p for p, _ in candidates(tmp_path, last=4)]


def test_selection_tracks_lie_between_the_periodic_and_the_test_seeds():
    from distracer.evaluate import TEST_SEED_OFFSET

    seeds = selection_seeds(1_000_000, 20)
    assert seeds[0] == 1_000_000 + SELECT_SEED_OFFSET and len(seeds) == 20
    assert 1_000_000 + 1000 * 100_000 < seeds[0] and seeds[-1] < 1_000_000 + TEST_SEED_OFFSET


def test_a_finished_run_keeps_its_pick_as_best_and_recommends_it(ray_local, tmp_path, capsys):
    from test_runtime import small_config

    from distracer.checkpoint import list_checkpoints, load_checkpoint
    from distracer.cli import done_lines
    from distracer.runtime.driver import train

    config = small_config(tmp_path, "ppo", "total_env_steps=192", "checkpoint.every_env_steps=64",
                          "eval.select_episodes=2", "eval.select_last=2")
    summary = train(config, handle_signals=False)
    out = capsys.readouterr().out
    best = list_checkpoints(tmp_path / "ppo" / "best")
    assert len(best) == 1 and summary["best_checkpoint"] == str(best[0])
    record = summary["selection"]
    assert [c["label"] for c in record["candidates"]] == ["checkpoint", "final"]  # no periodic evaluation ran
    assert record["episodes"] == 2 and all(len(c["returns"]) == 2 for c in record["candidates"])
    kept = load_checkpoint(best[0])  # verified, the one format
    assert kept.state["selection"] == json.loads(json.dumps(record))
    chosen = load_checkpoint(record["chosen"])
    assert kept.state["counters"] == chosen.state["counters"]
    policy = chosen.learner_state["modules"]["policy"]
    assert policy and all(torch.equal(kept.learner_state["modules"]["policy"][k], v) for k, v in policy.items())
    assert "distracer: selection on 2 tracks" in out and "recommended:" in out
    assert any(line.startswith("distracer: recommended: ") and str(best[0]) in line for line in done_lines(summary))
    # `distracer select` makes the same pick again for a run (here: on 2 other tracks' worth of the same seeds).
    from distracer.cli import main

    assert main(["select", str(tmp_path / "ppo"), "--episodes", "2", "--last", "2", "--workers", "1",
                 "--json", str(tmp_path / "selection.json")]) == 0
    again = json.loads((tmp_path / "selection.json").read_text())
    assert again["candidates"] == record["candidates"]  # deterministic: the same policies on the same tracks
    assert len(list_checkpoints(tmp_path / "ppo" / "best")) == 1
    assert main(["select", str(tmp_path / "ppo"), "--episodes", "1"]) == 2  # one line, nothing started
