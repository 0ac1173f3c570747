"""The pieces the runtime is wired from: algorithm specs, the typed report, the env-stepping function."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from distracer.algos import ALGOS, spec
from distracer.config import TrainConfig
from distracer.envs.stepping import step_envs
from distracer.errors import ConfigError
from distracer.runtime.report import METRICS, RunReport


def test_every_algorithm_declares_what_the_runtime_reads():
    for algo in ALGOS:
        s = spec(algo)
        config = s.load("config")()
        assert s.load("learner").algo == algo
        config.derive(1000, 4)  # every config has it
        if s.off_policy:
            for name in ("batch_size", "gamma", "n_step", "replay_ratio", "learning_starts"):
                assert hasattr(config, name), (algo, name)
            assert config.worker_epsilon(0, 0, 1) is None or 0.0 <= config.worker_epsilon(0, 0, 1) <= 1.0
    with pytest.raises(ConfigError, match="unknown"):
        spec("a2c")


def test_derived_settings_follow_the_run():
    config = TrainConfig(algo="ppo", total_env_steps=40_960)
    config.resources.num_workers, config.resources.envs_per_worker = 2, 4
    config.validate()
    assert config.ppo.num_envs == 8 and config.ppo.total_updates == 40_960 // (config.ppo.num_steps * 8)
    dqn = TrainConfig(algo="dqn", total_env_steps=5000)
    dqn.env.action_space = "discrete"
    assert dqn.validate().dqn.exploration_horizon == 5000


def test_the_report_is_the_one_list_of_metrics():
    from distracer.tuning import REPORTED

    report = RunReport(kind="checkpoint", env_steps=10, num_updates=2, episodes=1, weights_version=3,
                       worker_restarts=0, recoveries=0, eval_return_mean=1.5, eval_return_std=0.5,
                       best_eval_return=1.5, episode_return_mean=float("nan"), env_steps_per_s=5.0,
                       wall_seconds=2.0, replay_ratio=0.2, learner={"loss": 0.1}, checkpoint="/c")
    scalars = [f.name for f in dataclasses.fields(RunReport) if f.type in ("int", "float")]
    assert list(METRICS) == scalars and set(METRICS) <= set(REPORTED)
    assert report.metrics()["learner/loss"] == 0.1 and "kind" not in report.metrics()
    summary = report.to_dict()
    assert summary["checkpoint"] == "/c" and "best_checkpoint" not in summary


class _Env:
    """Ends its episode at step 3 (terminated) with info["episode"], as RecordEpisodeStatistics does."""

    def __init__(self):
        self.t, self.resets = 0, 0

    def step(self, action):
        self.t += 1
        done = self.t == 3
        info = {"episode": {"r": np.array([7.0]), "l": np.array([3])}} if done else {}
        return np.full(2, self.t), 1.0, done, False, info

    def reset(self):
        self.t, self.resets = 0, self.resets + 1
        return np.zeros(2), {}


def test_step_envs_resets_finished_episodes_and_reports_them():
    envs = [_Env(), _Env()]
    steps = [step_envs(envs, np.array([0, 1])) for _ in range(3)]
    last = steps[-1][0]
    assert last.terminated and last.reset and last.episode == (7.0, 3)
    assert np.array_equal(last.obs, [3, 3]) and np.array_equal(last.next_obs, [0, 0])  # final obs, then reset
    assert all(s.episode is None and not s.reset for s in steps[0]) and envs[0].resets == 1
    assert steps[0][1].action == 1
