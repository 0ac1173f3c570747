"""Every YAML in tune_configs/ loads and validates; search configs' `tune:` sections too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distracer.config import load_config, read_yaml
from distracer.tuning import load_search

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("tune_configs/*.yaml"))
ALGOS = ["sac_drq", "ppo", "dqn"]
PRESETS = sorted(p.stem for p in CONFIGS if p.stem not in ALGOS and not p.stem.startswith("search_"))


def test_configs_found():
    names = {p.stem for p in CONFIGS}
    assert {"sac_drq", "ppo", "dqn", "search_sac_drq", "search_ppo", "search_dqn"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), f"{path.name} must hold a mapping"
    if "tune" in read_yaml(path):
        search = load_search(str(path))  # base config, tune section, and sample trial configs
        assert path.stem.startswith("search_"), "only search_*.yaml carry a tune: section"
        assert search.settings.num_trials() >= 1
        assert search.config.algo in path.stem
    else:
        load_config(str(path))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("algo", ALGOS)
def test_presets_layer_over_every_algorithm(algo, preset):
    """`make train ALGO=... PRESET=...`: the algorithm's file, then the preset's resources."""
    config = load_config([str(REPO / f"tune_configs/{algo}.yaml"), str(REPO / f"tune_configs/{preset}.yaml")])
    assert config.algo == algo


@pytest.mark.parametrize("override", ["ppo.ent_coef=.nan", "ppo.ent_coef=.inf", "ppo.vf_coef=.nan", "ppo.lr=nan",
                                      "sac_drq.tau=-.inf", "dqn.learning_rate=.nan", "max_minutes=.inf",
                                      "resources.worker_cpus=.nan", "eval.episodes=.inf",
                                      "checkpoint.every_minutes=.nan", "ppo.clip_range_vf=.nan"])
def test_non_finite_numbers_are_refused_in_every_section(override):
    from distracer.errors import ConfigError

    key = override.split("=")[0]
    try:
        load_config([str(REPO / "tune_configs/ppo.yaml")], [override])
    except ConfigError as exc:
        assert key in str(exc) and ("finite" in str(exc) or "integer" in str(exc))
    else:
        pytest.fail(f"{override} was accepted")


def test_exponent_without_a_dot_is_a_number_on_the_command_line():
    # YAML 1.1 reads 1e-3 as a string; a user means the number.
    config = load_config([str(REPO / "tune_configs/sac_drq.yaml")], ["sac_drq.init_alpha=1e-3", "ppo.lr=3e-4"])
    assert config.sac_drq.init_alpha == 1e-3 and config.ppo.lr == 3e-4


def test_learner_threads_default_to_the_reserved_cpus_and_refuse_negatives():
    from distracer.errors import ConfigError

    assert load_config(None, []).learner.threads == 0
    assert load_config(None, ["learner.threads=2"]).learner.threads == 2
    with pytest.raises(ConfigError, match="learner.threads=-1"):
        load_config(None, ["learner.threads=-1"])
