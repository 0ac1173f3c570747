"""SB3 interop: export distracer PPO/DQN -> SB3 .zip that loads and acts alike; evaluate SB3 zips safely."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from test_evaluate import make_checkpoint

from distracer.errors import ConfigError
from distracer.evaluate import evaluate_checkpoint, learner_from_checkpoint
from distracer.sb3_interop import SB3Bundle, SB3Predictor, export_sb3, read_sb3_zip, sb3_env_config

sb3 = pytest.importorskip("stable_baselines3")


def random_obs(shape: tuple[int, ...], n: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("algo, extra, cls", [
    ("ppo", (), "PPO"),
    ("ppo", ("env.action_space=discrete",), "PPO"),
    ("dqn", (), "DQN"),
])
def test_exported_model_loads_in_sb3_and_chooses_the_same_actions(tmp_path, algo, extra, cls):
    ckpt = make_checkpoint(tmp_path / "run", algo, "env.frame_size=48", *extra)
    out, exported_algo = export_sb3(ckpt, tmp_path / "model.zip")
    assert exported_algo == algo and out.is_file()
    model = getattr(sb3, cls).load(str(out), device="cpu")  # SB3's own loader, as a user would call it
    learner, _, _ = learner_from_checkpoint(ckpt)
    obs = random_obs(learner.obs_shape)
    theirs, _ = model.predict(obs, deterministic=True)
    with torch.no_grad():
        ours = learner.act(obs, explore=False)
    if ours.dtype.kind == "f":
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
        assert np.abs(ours).max() > 1e-4  # not trivially all-zero actions
    else:
        np.testing.assert_array_equal(theirs, ours)
    # What the zip says about itself is read without unpickling, and matches the checkpoint's env.
    info = read_sb3_zip(out)
    assert info.algo == algo and info.obs_shape == tuple(learner.obs_shape)
    assert sb3_env_config(info).action_space == learner_from_checkpoint(ckpt)[1].env.action_space


def test_exported_zip_scores_what_the_checkpoint_scores(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run", "ppo")
    out, _ = export_sb3(ckpt, tmp_path / "ppo.zip")
    kwargs = {"episodes": 1, "max_steps": 15, "workers": 1, "log": lambda _: None}
    ours = evaluate_checkpoint(ckpt, **kwargs)
    theirs = evaluate_checkpoint(out, trust_pickle=True, **kwargs)
    assert (theirs["format"], theirs["algo"]) == ("sb3", "ppo")
    assert theirs["seeds"] == ours["seeds"]
    assert theirs["returns"] == pytest.approx(ours["returns"], abs=1e-6)


@pytest.mark.parametrize("algo, extra, message", [
    ("sac_drq", (), "separate actor and critic CNNs"),
    ("dqn", ("dqn.dueling=true",), "dueling"),
])
def test_unexportable_checkpoints_are_refused(tmp_path, algo, extra, message):
    ckpt = make_checkpoint(tmp_path / "run", algo, "env.frame_size=48", *extra)
    with pytest.raises(ConfigError, match=message):
        export_sb3(ckpt, tmp_path / "model.zip")
    assert not (tmp_path / "model.zip").exists()


def _seed_style_ppo(tmp_path, norm_obs: bool):
    """An SB3 PPO as the seed project trained it: channel-last 84x84x4 frames, a VecNormalize beside it.

    The seed normalised rewards only (norm_obs=False) and SB3 transposed its frames itself. SB3 takes
    normalised image observations only channel-first and with its own /255 scaling off, so a model with
    norm_obs=True is built that way.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize, VecTransposeImage

    from distracer.envs import EnvConfig, make_env

    venv = DummyVecEnv([lambda: make_env(EnvConfig(channel_order="last"), seed=0, stock=True)])
    if norm_obs:
        venv = VecTransposeImage(venv)
    venv = VecNormalize(venv, norm_obs=norm_obs, norm_reward=True)
    if norm_obs:  # statistics far from (0, 1), so using them or not changes the input a lot
        venv.obs_rms.mean = np.full(venv.obs_rms.mean.shape, 120.0)
        venv.obs_rms.var = np.full(venv.obs_rms.var.shape, 900.0)
    model = sb3.PPO("CnnPolicy", venv, n_steps=16, batch_size=16, device="cpu", seed=0,
                    policy_kwargs={"normalize_images": not norm_obs})
    model.save(tmp_path / "best_model.zip")
    venv.save(str(tmp_path / "vecnormalize.pkl"))
    return model, venv


def test_sb3_ppo_with_obs_normalisation_acts_on_distracer_observations(tmp_path):
    model, venv = _seed_style_ppo(tmp_path, norm_obs=True)
    info = read_sb3_zip(tmp_path / "best_model.zip")
    config = sb3_env_config(info)
    assert (config.frame_size, config.frame_stack, config.action_space) == (84, 4, "continuous")
    actor = SB3Predictor(SB3Bundle("ppo", (tmp_path / "best_model.zip").read_bytes(),
                               (tmp_path / "vecnormalize.pkl").read_bytes()))
    obs = random_obs((4, 84, 84), n=4)
    for frame in obs:
        expected = np.clip((frame - 120.0) / np.sqrt(900.0 + venv.epsilon), -venv.clip_obs, venv.clip_obs)
        want, _ = model.predict(expected.astype(np.float32), deterministic=True)
        np.testing.assert_allclose(actor(frame), want, atol=1e-5)
    # Without the statistics the same frames give other actions: the file is really used.
    bare = SB3Predictor(SB3Bundle("ppo", (tmp_path / "best_model.zip").read_bytes()))
    assert not np.allclose(bare(obs[0]), actor(obs[0]), atol=1e-4)


def test_seed_style_channel_last_sb3_ppo_scores_on_the_stock_env(tmp_path):
    model, _ = _seed_style_ppo(tmp_path, norm_obs=False)
    report = evaluate_checkpoint(tmp_path / "best_model.zip", episodes=1, max_steps=10, trust_pickle=True,
                                 log=lambda _: None)
    assert report["format"] == "sb3" and report["algo"] == "ppo"
    assert report["checkpoint_info"]["vecnormalize"].endswith("vecnormalize.pkl")  # found beside the zip
    assert report["lengths"] == [10] and np.isfinite(report["mean"])


def test_sb3_files_need_trust_pickle_and_are_inspected_without_unpickling(tmp_path, monkeypatch, capsys):
    from distracer.cli import main

    _seed_style_ppo(tmp_path, norm_obs=False)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "best_model.zip"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unpickles Python objects" in err and "--trust-pickle" in err
    # Reading what the zip holds (algo, spaces) never unpickles: make every unpickler fail and read it again.
    import cloudpickle

    def refuse(*_args, **_kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(cloudpickle, "loads", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    info = read_sb3_zip(tmp_path / "best_model.zip")
    assert info.algo == "ppo" and info.obs_shape == (4, 84, 84)  # SB3 transposed the seed's channel-last frames


def test_missing_vecnorm_is_one_line(tmp_path, capsys):
    from distracer.cli import main

    _seed_style_ppo(tmp_path, norm_obs=False)
    args = ["evaluate", "--checkpoint", str(tmp_path / "best_model.zip"), "--trust-pickle",
            "--vecnorm", str(tmp_path / "nope.pkl"), "--episodes", "1"]
    assert main(args) == 2
    assert "nope.pkl" in capsys.readouterr().err


def test_zip_with_an_uninstalled_schedule_module_still_evaluates(tmp_path, monkeypatch):
    # The common field case: PPO trained with a `linear_schedule` from the user's own script; the zip pickles
    # it by reference to a module this machine lacks. Acting never uses it.
    import importlib
    import sys

    from stable_baselines3.common.vec_env import DummyVecEnv
    from test_ppo import SidePixelTask

    (tmp_path / "user_schedules.py").write_text("def linear_schedule(progress):\n    return 1e-4 * progress\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user = importlib.import_module("user_schedules")
    env = DummyVecEnv([lambda: SidePixelTask("continuous", frame_size=84)])
    model = sb3.PPO("CnnPolicy", env, n_steps=16, batch_size=16, device="cpu", seed=0,
                    learning_rate=user.linear_schedule, clip_range=user.linear_schedule)
    model.save(tmp_path / "zoo" / "model.zip")
    monkeypatch.delitem(sys.modules, "user_schedules")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(ModuleNotFoundError):
        sb3.PPO.load(tmp_path / "zoo" / "model.zip", device="cpu")

    lines = []
    report = evaluate_checkpoint(tmp_path / "zoo" / "model.zip", episodes=1, max_steps=5, trust_pickle=True,
                                 log=lines.append)
    assert report["checkpoint_info"]["replaced_training_objects"]
    assert any("training-only objects" in line and "replaced" in line for line in lines)
    actor = SB3Predictor(SB3Bundle("ppo", (tmp_path / "zoo" / "model.zip").read_bytes()))
    obs = random_obs((4, 84, 84), n=1)[0]
    want, _ = model.predict(np.moveaxis(obs, 0, -1) if model.observation_space.shape[-1] == 4 else obs,
                            deterministic=True)
    np.testing.assert_allclose(actor(obs), want, atol=1e-6)


@pytest.mark.parametrize("shape, stack", [((96, 96, 3), 1), ((96, 96, 12), 4)])
def test_rgb_sb3_models_are_never_scored_on_a_guessed_input(tmp_path, shape, stack):
    from gymnasium import spaces
    from stable_baselines3.common.vec_env import DummyVecEnv

    from distracer.sb3_interop import _SpacesEnv

    obs_space = spaces.Box(0, 255, shape, np.uint8)
    env = DummyVecEnv([lambda: _SpacesEnv(obs_space, spaces.Box(-1.0, 1.0, (2,), np.float32))])
    sb3.PPO("CnnPolicy", env, n_steps=16, batch_size=16, device="cpu", seed=0).save(tmp_path / "rgb.zip")
    info = read_sb3_zip(tmp_path / "rgb.zip")
    with pytest.raises(ConfigError, match=rf"takes {shape[2]} channels: {stack} RGB frame\(s\) or {shape[2]} "
                                          "grayscale frames.*--color rgb or --color gray"):
        sb3_env_config(info)
    config = sb3_env_config(info, action_repeat=2, color="rgb")
    assert (config.grayscale, config.frame_stack, config.frame_size, config.action_repeat) == (False, stack, 96, 2)
    lines = []
    report = evaluate_checkpoint(tmp_path / "rgb.zip", episodes=1, max_steps=3, trust_pickle=True, color="rgb",
                                 action_repeat=2, log=lines.append)
    assert report["lengths"] == [6] and report["env_config"]["grayscale"] is False
    assert any(f"{stack} RGB frame(s) of 96x96, action repeat 2" in line for line in lines)
    with pytest.raises(ConfigError, match="--color and --action-repeat|--action-repeat and --color"):
        evaluate_checkpoint(make_checkpoint(tmp_path / "d", "ppo"), episodes=1, color="rgb")


def test_a_vecnormalize_of_another_shape_is_named_at_load(tmp_path):
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    _, venv = _seed_style_ppo(tmp_path, norm_obs=True)
    venv.obs_rms = RunningMeanStd(shape=(2, 64, 64))
    venv.save(str(tmp_path / "other_run.pkl"))
    with pytest.raises(ConfigError, match=r"other_run.pkl' holds observation statistics of shape \(2, 64, 64\); "
                                          r"the SB3 model takes \(4, 84, 84\)"):
        evaluate_checkpoint(tmp_path / "best_model.zip", episodes=1, trust_pickle=True,
                            vecnorm=tmp_path / "other_run.pkl", log=lambda _: None)
