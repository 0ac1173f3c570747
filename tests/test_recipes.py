"""`--algo/--preset auto`: the recipe `make train` runs on the machine it finds, and the progress rates."""

from __future__ import annotations

import re

import pytest

from distracer.config import load_config
from distracer.errors import ConfigError
from distracer.recipes import PRESETS, choose_recipe, config_dir
from distracer.runtime.logger import RATE_WINDOW_S, BusyMeter, RunLogger


def test_auto_picks_ppo_on_cpu_and_sac_drq_on_a_gpu():
    cpu = choose_recipe(cuda=False)
    assert (cpu.algo, cpu.preset, cpu.device) == ("ppo", "cpu", "cpu")
    assert "no CUDA GPU" in cpu.reason and cpu.warning is None
    gpu = choose_recipe(cuda=True)
    assert (gpu.algo, gpu.preset, gpu.device) == ("sac_drq", "laptop", "cuda")
    assert gpu.warning is None


@pytest.mark.parametrize("algo", ["sac_drq", "dqn"])
def test_a_slow_cpu_choice_is_kept_with_a_one_line_warning(algo):
    recipe = choose_recipe(algo, "auto", cuda=False)
    assert (recipe.algo, recipe.preset) == (algo, "cpu")
    assert recipe.warning and "\n" not in recipe.warning and "ppo" in recipe.warning
    assert choose_recipe(algo, "auto", cuda=True).warning is None


def test_explicit_preset_is_kept_and_unknown_names_are_refused():
    assert choose_recipe("ppo", "workstation", cuda=False).preset == "workstation"
    with pytest.raises(ConfigError, match="--algo 'a2c' is unknown"):
        choose_recipe("a2c", "auto", cuda=False)
    with pytest.raises(ConfigError, match="--preset 'huge' is unknown"):
        choose_recipe("auto", "huge", cuda=False)


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("algo", ["auto", "ppo", "sac_drq", "dqn"])
def test_every_recipe_resolves_to_a_valid_config(algo, cuda):
    recipe = choose_recipe(algo, "auto", cuda=cuda)
    files = recipe.config_files()
    assert all(str(config_dir()) in f for f in files)
    config = load_config(files)
    assert config.algo == recipe.algo
    for preset in PRESETS:
        load_config([files[0], str(config_dir() / f"{preset}.yaml")])


def test_progress_rates_average_over_a_window(tmp_path):
    # PPO moves its counters a whole rollout at a time; a 5-second rate would read 0 between rollouts.
    logger = RunLogger(tmp_path, load_config([]), start_steps=1000, start_updates=10)
    t0 = logger.start
    assert logger._rates(t0 + 10, 1000, 10) == (0.0, 0.0)
    steps_s, updates_s = logger._rates(t0 + 20, 5096, 11)
    assert steps_s == pytest.approx(4096 / 20) and updates_s == pytest.approx(1 / 20)
    assert logger._rates(t0 + 25, 5096, 11)[0] == pytest.approx(4096 / 25)  # no rollout in 5 s: still > 0
    # Old samples leave the window: the rate is over about the last RATE_WINDOW_S seconds.
    late = t0 + 25 + 2 * RATE_WINDOW_S
    logger._rates(late - RATE_WINDOW_S / 2, 9192, 12)
    steps_s, _ = logger._rates(late, 13288, 13)
    assert steps_s == pytest.approx(2 * 4096 / (late - (t0 + 25)), rel=1e-6)
    logger.close()


def test_terminal_gets_one_tqdm_bar_and_files_get_plain_lines(tmp_path, capsys):
    from types import SimpleNamespace

    config = load_config([])
    counters = SimpleNamespace(env_steps=4096, num_updates=1, last_eval=float("nan"))
    bar = RunLogger(tmp_path / "a", config, progress_every_s=0, bar=True)
    bar.progress(counters, {}, None)
    bar.info("distracer: checkpoint x")
    assert bar.bar.n == 4096
    bar.close()
    plain = RunLogger(tmp_path / "b", config, progress_every_s=0, bar=False)
    plain.progress(counters, {}, 0.5)
    plain.close()
    out = capsys.readouterr().out
    assert "distracer: checkpoint x" in out
    assert f"[sac_drq] 4,096/{config.total_env_steps:,} steps |" in out and "replay 50%" in out


def test_eta_is_the_time_budget_when_that_ends_the_run_first(tmp_path, capsys):
    # 4,096 steps in 20 s toward 1M steps is ~81 minutes; a budget with 10 minutes left ends the run first.
    from types import SimpleNamespace

    config = load_config([])
    counters = SimpleNamespace(env_steps=5096, num_updates=11, last_eval=float("nan"))
    plain = RunLogger(tmp_path / "a", config, progress_every_s=0, start_steps=1000, start_updates=10, bar=False)
    plain.start -= 20
    plain.samples[0] = (plain.start, 1000, 10)
    plain.progress(counters, {}, None, time_left_s=600.0)
    plain.last_progress = 0.0
    plain.progress(counters, {}, None)  # no time budget: the steps decide
    plain.close()
    bar = RunLogger(tmp_path / "b", config, progress_every_s=0, bar=True)
    bar.samples[0] = (bar.start - 20, 0, 0)
    bar.progress(SimpleNamespace(env_steps=4096, num_updates=1, last_eval=float("nan")), {}, None, time_left_s=90.0)
    assert bar.bar.postfix.endswith("| ends in 1m30s (max_minutes)"), bar.bar.postfix
    bar.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[sac_drq] ")]
    assert lines[0].endswith("| ETA 10m00s (max_minutes)"), lines
    assert re.search(r"\| ETA 1h2[01]m$", lines[1]), lines  # (1M - 5,096) steps at 4,096 per 20 s


def test_busy_fractions_count_collect_and_update_seconds_and_survive_a_learner_restart():
    meter = BusyMeter(num_workers=2, window_s=60)
    t0 = meter.window_start
    meter.learner_total_now(12.0)   # a fresh learner actor: all of it is this run's
    meter.add_collect(30.0)
    meter.add_collect(54.0)
    assert meter.fractions(t0 + 30) is None  # the window is not full yet
    meter.learner_total_now(30.0)   # +18
    meter.learner_total_now(6.0)    # a restarted actor counts from 0 again: +6
    assert meter.fractions(t0 + 60) == pytest.approx({"learner_busy": 36 / 60, "workers_busy": 84 / 120})
    meter.add_collect(500.0)        # never above 1 (a call that began before the window)
    assert meter.fractions(t0 + 70, force=True) == pytest.approx({"learner_busy": 0.0, "workers_busy": 1.0})
