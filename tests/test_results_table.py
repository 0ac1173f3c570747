"""The README's results table is the one its results files give (benchmarks/results_table.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import results_table  # noqa: E402


def test_the_readme_table_is_generated_from_the_results_files():
    assert results_table.main(["--check"]) == 0, "run: python benchmarks/results_table.py --write"


def test_a_changed_figure_is_caught_and_the_markers_are_required():
    readme = (results_table.REPO / "README.md").read_text()
    table = results_table.table()
    assert results_table.replace_in(readme, table) == readme
    assert results_table.replace_in(readme, table.replace("852.0", "900.0")) != readme
    with pytest.raises(ValueError, match="markers"):
        results_table.replace_in("# a README without the table", table)


def test_each_row_counts_laps_where_its_reports_hold_tiles():
    first = results_table.table().splitlines()[2]
    assert "| 3 |" in first and "of 300 |" in first  # 3 seeds x 100 episodes, laps counted from tiles_missed
