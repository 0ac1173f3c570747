"""Every YAML in tune_configs/ loads and validates; search configs' `tune:` sections too."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distracer import recipes
from distracer.algos import ALGOS
from distracer.config import load_config, read_yaml
from distracer.errors import ConfigError
from distracer.tuning import load_search

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("tune_configs/*.yaml"))
PRESETS = sorted(recipes.PRESETS)


def test_every_config_file_has_a_role():
    """Each file in tune_configs/ is an algorithm, a resources preset (`--preset`), a Tune search, or a whole
    recipe extending an algorithm and a preset (`-c`), so a new preset cannot be forgotten in PRESETS."""
    whole = {"ppo_two_phase": ["ppo.yaml", "cpu.yaml"]}
    roles = set(ALGOS) | set(recipes.PRESETS) | set(whole)
    assert [p.name for p in CONFIGS if p.stem not in roles and not p.stem.startswith("search_")] == []
    for name, parents in whole.items():  # also what `make train ALGO=ppo PRESET=cpu ARGS="-c FILE"` loads
        assert yaml.safe_load((REPO / f"tune_configs/{name}.yaml").read_text())["extends"] == parents
        alone = load_config(str(REPO / f"tune_configs/{name}.yaml"))
        layered = load_config([str(REPO / f"tune_configs/{f}") for f in (*parents, f"{name}.yaml")])
        assert alone.to_dict() == layered.to_dict()


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


@pytest.mark.parametrize("override", ["ppo.ent_coef=.nan", "ppo.ent_coef=.inf", "ppo.vf_coef=.nan",
                                      "ppo.learning_rate=nan",
                                      "sac_drq.tau=-.inf", "dqn.learning_rate=.nan", "max_minutes=.inf",
                                      "resources.worker_cpus=.nan", "eval.episodes=.inf",
                                      "checkpoint.every_minutes=.nan", "ppo.clip_range_vf=.nan"])
def test_non_finite_numbers_are_refused_in_every_section(override):

    key = override.split("=")[0]
    try:
        load_config([str(REPO / "tune_configs/ppo.yaml")], [override])
    except ConfigError as exc:
        assert key in str(exc) and ("finite" in str(exc) or "integer" in str(exc))
    else:
        pytest.fail(f"{override} was accepted")


def test_exponent_without_a_dot_is_a_number_on_the_command_line():
    # YAML 1.1 reads 1e-3 as a string; a user means the number.
    config = load_config([str(REPO / "tune_configs/sac_drq.yaml")],
                         ["sac_drq.init_alpha=1e-3", "ppo.learning_rate=3e-4"])
    assert config.sac_drq.init_alpha == 1e-3 and config.ppo.learning_rate == 3e-4


def test_learner_threads_default_to_the_reserved_cpus_and_refuse_negatives():

    assert load_config(None, []).learner.threads == 0
    assert load_config(None, ["learner.threads=2"]).learner.threads == 2
    with pytest.raises(ConfigError, match="learner.threads=-1"):
        load_config(None, ["learner.threads=-1"])


def test_old_names_still_load_with_a_one_line_note(capsys, tmp_path):
    import distracer.config as config_module

    config_module._NOTED_RENAMES.clear()
    old = tmp_path / "old.yaml"
    old.write_text("algo: sac_drq\nsac_drq:\n  feature_dim: 32\n  drq_pad: 2\n  updates_per_step: 0.5\n"
                   "  grad_clip: 10.0\n  target_update_every: 2\n  actor_update_every: 2\n")
    config = load_config([str(old)], ["ppo.lr=3e-4", "dqn.updates_per_step=0.5"])
    s = config.sac_drq
    assert (s.features_dim, s.augment_pad, s.replay_ratio, s.max_grad_norm) == (32, 2, 0.5, 10.0)
    assert (s.target_update_interval, s.actor_update_interval) == (2, 2)
    assert config.ppo.learning_rate == 3e-4 and config.dqn.replay_ratio == 0.5
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 8 and all(n.startswith("distracer: note:") and "still loads" in n for n in notes)
    assert "sac_drq.drq_pad is now called sac_drq.augment_pad" in "\n".join(notes)
    load_config([str(old)], [])  # each old name is noted once per process
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="same setting"):
        load_config(None, ["ppo.lr=3e-4", "ppo.learning_rate=1e-4"])


def test_an_old_name_in_a_when_algo_block_is_noted_once(capsys, tmp_path):
    import distracer.config as config_module

    config_module._NOTED_RENAMES.clear()
    layer = tmp_path / "layer.yaml"
    layer.write_text("when_algo:\n  dqn:\n    dqn:\n      updates_per_step: 0.5\n")
    config = load_config([str(REPO / "tune_configs/dqn.yaml"), str(layer)], [])
    assert config.dqn.replay_ratio == 0.5
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == ["distracer: note: when_algo.dqn.dqn.updates_per_step is now called "
                     "when_algo.dqn.dqn.replay_ratio; the old name still loads"]


def test_a_later_layers_old_name_wins_over_an_earlier_layers_new_name(tmp_path):

    new = tmp_path / "new.yaml"
    new.write_text("off_policy:\n  weights_interval: 3\n")
    old = tmp_path / "old.yaml"
    old.write_text("dqn:\n  updates_per_step: 0.5\nresources:\n  weights_every: 7\n")
    config = load_config([str(REPO / "tune_configs/dqn.yaml"), str(new), str(old)], ["ppo.lr=3e-4"])
    assert (config.dqn.replay_ratio, config.off_policy.weights_interval) == (0.5, 7)
    assert config.ppo.learning_rate == 3e-4
    child = tmp_path / "child.yaml"  # extends the file with the old names, sets the new ones
    child.write_text("extends: old.yaml\ndqn:\n  replay_ratio: 2.0\noff_policy:\n  weights_interval: 9\n")
    config = load_config([str(child)], ["dqn.updates_per_step=1.0"])
    assert (config.dqn.replay_ratio, config.off_policy.weights_interval) == (1.0, 9)
    both = tmp_path / "both.yaml"  # within one layer, both names is still a mistake
    both.write_text("dqn:\n  updates_per_step: 0.5\n  replay_ratio: 1.0\n")
    with pytest.raises(ConfigError, match="same setting"):
        load_config([str(both)], [])


def test_old_names_in_a_when_algo_block_and_in_a_search_are_renamed_before_merging(tmp_path):
    from distracer.config import config_from_dict
    from distracer.tuning.search import load_search, trial_config

    layer = tmp_path / "layer.yaml"
    layer.write_text("when_algo:\n  dqn:\n    resources:\n      weights_every: 7\n")
    config = load_config([str(REPO / "tune_configs/dqn.yaml"), str(layer)], [])
    assert config.off_policy.weights_interval == 7
    config = load_config([str(REPO / "tune_configs/dqn.yaml")], ["when_algo.dqn.dqn.updates_per_step=0.5"])
    assert config.dqn.replay_ratio == 0.5
    saved = config.to_dict()  # a Tune or checkpoint dict with a block that uses an old name
    saved["when_algo"] = {"dqn": {"dqn": {"updates_per_step": 0.75}}}
    assert config_from_dict(saved).dqn.replay_ratio == 0.75
    search_file = tmp_path / "search.yaml"
    search_file.write_text("extends: " + str(REPO / "tune_configs/dqn.yaml") + "\ndqn:\n  updates_per_step: 0.5\n"
                           "tune:\n  num_samples: 2\n  search_space:\n"
                           "    dqn.updates_per_step: {type: choice, values: [0.25, 1.0]}\n")
    search = load_search([str(search_file)])
    assert trial_config(search, {"dqn.updates_per_step": 1.0}).dqn.replay_ratio == 1.0


def test_a_config_saved_under_the_old_names_loads(tmp_path):
    from distracer.config import config_from_dict

    saved = load_config([str(REPO / "tune_configs/sac_drq.yaml")], []).to_dict()
    section = saved["sac_drq"]
    section["feature_dim"], section["updates_per_step"] = section.pop("features_dim"), section.pop("replay_ratio")
    config = config_from_dict(saved)  # what a checkpoint written before the rename holds
    assert config.sac_drq.features_dim == 64 and config.sac_drq.replay_ratio == 2.0


def test_settings_that_moved_section_still_load_with_a_note(capsys):
    import distracer.config as config_module
    from distracer.config import config_from_dict

    config_module._NOTED_RENAMES.clear()
    config = load_config(None, ["resources.fragment_length=16", "resources.weights_every=10"])
    assert (config.off_policy.fragment_length, config.off_policy.weights_interval) == (16, 10)
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == ["distracer: note: resources.fragment_length is now called off_policy.fragment_length; "
                     "the old name still loads",
                     "distracer: note: resources.weights_every is now called off_policy.weights_interval; "
                     "the old name still loads"]
    saved = load_config(None, []).to_dict()  # a checkpoint written before the move holds them under resources
    saved["resources"]["weights_every"] = saved["off_policy"].pop("weights_interval")
    assert config_from_dict(saved).off_policy.weights_interval == 50
    with pytest.raises(ConfigError, match="same setting"):
        load_config(None, ["resources.fragment_length=16", "off_policy.fragment_length=8"])
    with pytest.raises(ConfigError, match="off_policy.weights_interval=0 must be >= 1"):
        load_config(None, ["off_policy.weights_interval=0"])


def _write(tmp_path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_when_algo_applies_to_its_algorithm_between_the_files_and_the_command_line(tmp_path):
    algo_file = _write(tmp_path, "algo.yaml", {"algo": "sac_drq", "env": {"frame_stack": 4, "action_repeat": 2}})
    preset = _write(tmp_path, "preset.yaml", {
        "env": {"frame_size": 64},
        "when_algo": {"sac_drq": {"env": {"frame_stack": 2, "action_repeat": 4}, "learner": {"threads": 2}},
                      "dqn": {"env": {"frame_stack": 3}}}})
    config = load_config([algo_file, preset])
    # The preset's block wins over the algorithm file layered under it; the other algorithm's block is dropped.
    assert (config.env.frame_stack, config.env.action_repeat, config.learner.threads) == (2, 4, 2)
    assert config.env.frame_size == 64
    # The command line wins over the block, and so does a file layered after the preset, or one extending it.
    assert load_config([algo_file, preset], ["env.frame_stack=1"]).env.frame_stack == 1
    user = _write(tmp_path, "user.yaml", {"env": {"frame_stack": 4}})
    assert load_config([algo_file, preset, user]).env.frame_stack == 4
    child = _write(tmp_path, "child.yaml", {"extends": ["algo.yaml", "preset.yaml"], "env": {"frame_stack": 3}})
    assert load_config([child]).env.frame_stack == 3
    # A block in a file layered under the algorithm's file loses to it, like any setting of that file.
    assert load_config([preset, algo_file]).env.frame_stack == 4
    # The algorithm named on the command line picks its own block.
    dqn = load_config([algo_file, preset], ["algo=dqn", "env.action_space=discrete"])
    assert (dqn.env.frame_stack, dqn.env.action_repeat, dqn.learner.threads) == (3, 2, 0)
    # A saved or Tune dict with a block resolves it too.
    from distracer.config import config_from_dict

    assert config_from_dict({"algo": "sac_drq", "when_algo": {"sac_drq": {"env": {"frame_stack": 1}}}}
                            ).env.frame_stack == 1


@pytest.mark.parametrize(("block", "message"), [
    ({"a2c": {"env": {"frame_stack": 2}}}, "when_algo.a2c: unknown algorithm; allowed: sac_drq"),
    ({"sac_drq": 3}, "when_algo must map algorithm names to mappings"),
    ([1, 2], "when_algo must map algorithm names to mappings"),
    ({"sac_drq": {"env": {"frame_stak": 2}}}, "when_algo.sac_drq.env.frame_stak: unknown key"),
    # Every block is checked, not only the trained algorithm's.
    ({"dqn": {"env": {"frame_stak": 2}}}, "when_algo.dqn.env.frame_stak: unknown key"),
    ({"sac_drq": {"algo": "ppo"}}, "when_algo.sac_drq.algo: not settable per algorithm"),
])
def test_bad_when_algo_blocks_are_refused_in_one_line(tmp_path, block, message):

    path = _write(tmp_path, "bad.yaml", {"algo": "sac_drq", "when_algo": block})
    with pytest.raises(ConfigError, match=message) as err:
        load_config([path])
    assert "\n" not in str(err.value) and "bad.yaml: " in str(err.value)  # the file that holds the block


def test_an_empty_when_algo_block_is_no_block(tmp_path):
    path = _write(tmp_path, "empty.yaml", {"algo": "sac_drq", "when_algo": {"sac_drq": None}})
    assert load_config([path]).env.frame_stack == 4


def test_a_search_resolves_when_algo_and_refuses_to_sample_the_algorithm(tmp_path):

    base = {"algo": "sac_drq", "when_algo": {"sac_drq": {"env": {"frame_stack": 2}}},
            "tune": {"num_samples": 1, "search_space": {"sac_drq.critic_lr": {"type": "choice", "values": [1e-4]}}}}
    search = load_search(_write(tmp_path, "search.yaml", base))
    assert search.config.env.frame_stack == 2 and "when_algo" not in search.base
    base["tune"]["search_space"]["algo"] = {"type": "choice", "values": ["sac_drq", "ppo"]}
    with pytest.raises(ConfigError, match="search_space samples algo"):
        load_search(_write(tmp_path, "search2.yaml", base))


def test_the_cpu_preset_gives_sac_drq_its_cpu_settings_and_leaves_the_others_alone():
    files = [str(REPO / "tune_configs/sac_drq.yaml"), str(REPO / "tune_configs/cpu.yaml")]
    sac = load_config(files)
    assert (sac.env.frame_size, sac.env.frame_stack, sac.learner.threads) == (64, 2, 2)
    assert sac.env.standstill_frames > 0
    ppo = load_config([str(REPO / "tune_configs/ppo.yaml"), str(REPO / "tune_configs/cpu.yaml")])
    dqn = load_config([str(REPO / "tune_configs/dqn.yaml"), str(REPO / "tune_configs/cpu.yaml")])
    assert ppo.learner.threads == 0 and dqn.learner.threads == 0 and dqn.env.frame_stack == 4
    # Gaussian noise of std exp(-2) per control, not gSDE, whose std grew late (docs/RESULTS.md, ppo_gaussian)
    assert (ppo.ppo.use_sde, ppo.ppo.log_std_init) == (False, -2.0)
    two_phase = load_config([str(REPO / "tune_configs/ppo_two_phase.yaml")])
    assert (two_phase.ppo.use_sde, two_phase.ppo.log_std_init) == (True, -1.5)  # as measured
    laptop = load_config([str(REPO / "tune_configs/sac_drq.yaml"), str(REPO / "tune_configs/laptop.yaml")])
    assert laptop.env.frame_stack == 4  # the GPU recipe keeps the seed's 84x84x4


def test_env_switch_changes_training_rules_only_and_is_checked_before_anything_starts():
    config = load_config(None, ["env_switch.at_budget=0.75", "env_switch.env.standstill_frames=0",
                                "env.standstill_frames=100"])
    assert config.env_switch.switched(config.env).standstill_frames == 0
    assert config.env.standstill_frames == 100  # the run starts under the first rules
    for sets, message in [
        (["env_switch.at_budget=0.5", "env_switch.env.frame_size=64"], "training-only settings .* not frame_size"),
        (["env_switch.at_budget=0.5"], "needs both at_budget"),
        (["env_switch.env.skip_penalty=-5"], "needs both at_budget"),
        (["env_switch.at_budget=1.0", "env_switch.env.skip_penalty=-5"], r"must be in \[0, 1\)"),
        (["env_switch.at_budget=0.5", "env_switch.env.skip_penalty=5"],
         "env_switch.env: env.skip_penalty=5.0 must be <= 0"),
        (["env_switch.at_budget=0.5", "env_switch.env.standstill_frames=yes"], "env_switch.env.standstill_frames"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, sets)


def test_the_log_std_ceiling_is_checked_against_the_action_space_before_anything_starts():
    config = load_config(["tune_configs/ppo.yaml"], ["ppo.log_std_final=-3.5"])
    assert config.ppo.log_std_final == -3.5 and config.ppo.log_std_init == -2.0
    with pytest.raises(ConfigError, match="env.action_space=discrete has none"):
        load_config(["tune_configs/ppo.yaml"], ["ppo.log_std_final=-3.5", "env.action_space=discrete"])
    with pytest.raises(ConfigError, match="ppo.accel_log_std_init sets a Gaussian's std"):
        load_config(["tune_configs/ppo.yaml"], ["ppo.accel_log_std_init=-3", "env.action_space=discrete"])
    assert load_config(["tune_configs/ppo.yaml"], ["ppo.accel_log_std_init=-3"]).ppo.accel_log_std_init == -3.0


@pytest.mark.parametrize("text, message", [
    ("algo: ppo\nppo:\n  n_epochs: 5\n  n_epochs: 7\n",
     r"key 'n_epochs' is given twice in one mapping \(lines 3 and 4\)"),
    ("ppo:\n  n_epochs: 5\nppo:\n  gamma: 0.9\n", r"key 'ppo' is given twice in one mapping \(lines 1 and 3\)"),
    ("algo: ppo\nppo:\n\tn_epochs: 5\n",
     r"not valid YAML at line 3, column 1: found character '\\t' that cannot start"),
    ("algo: [ppo\n", r"not valid YAML at line 2, column 1: .*expected ',' or ']'"),
])
def test_config_files_with_a_key_twice_or_bad_syntax_are_refused_saying_where(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"config file '{path}': {message}"):
        load_config([str(path)], [])


def test_yaml_anchors_and_merge_keys_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {n_epochs: 3}\nalgo: ppo\nppo:\n  <<: *b\n  gamma: 0.98\n")
    from distracer.strict_yaml import load_yaml

    assert load_yaml(path.read_text(), "x")["ppo"] == {"n_epochs": 3, "gamma": 0.98}
