"""Stable-Baselines3 interop: evaluate SB3 `.zip` models, export distracer PPO and DQN checkpoints to SB3.

Evaluation. An SB3 `.zip` holds a JSON `data` file whose entries SB3 restores with cloudpickle, and
`vecnormalize.pkl` is a pickle: loading either can run arbitrary code, so both need `--trust-pickle`.
What the env must look like (observation shape, action space) and which algorithm saved the model are
read from `data`'s plain-JSON fields without unpickling anything, so a refusal can say what the file is.
The seed project's SB3 PPO acted on 84x84 grayscale 4-frame stacks, channel-last; SB3 transposes such
spaces to channel-first itself (VecTransposeImage), so either layout is accepted. Only observation
normalisation matters for acting: a `vecnormalize.pkl` with `norm_obs=False` (the seed's reward-only
normalisation) changes nothing.

Export. distracer's PPO and DQN networks have SB3 CnnPolicy's layout (see algos/ppo.py, algos/dqn.py),
so export builds the SB3 model on a dummy env with the same spaces, loads the renamed state dict
strictly, checks that both choose the same actions, and saves. SAC+DrQ cannot be exported: SB3's SAC
has separate actor and critic CNNs, distracer's shares one DrQ encoder trained by the critic.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from distracer.envs import EnvConfig
from distracer.errors import ConfigError

# SB3 class per algorithm name distracer detects in a .zip.
SB3_CLASSES = {"ppo": "PPO", "a2c": "A2C", "dqn": "DQN", "sac": "SAC", "td3": "TD3"}
VECNORM_FILE = "vecnormalize.pkl"
EXPORTABLE = ("ppo", "dqn")


# Pickled objects of an SB3 zip that only training uses; replaced by constants when they cannot be unpickled.
TRAINING_ONLY = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0,
                 "clip_range_vf": None, "exploration_schedule": lambda _: 0.0}


def pickle_refusal(path: str | Path, what: str) -> ConfigError:
    return ConfigError(f"{str(path)!r} is {what}: loading it unpickles Python objects, which can run arbitrary "
                       "code; pass --trust-pickle if you trust where it came from")


# ----------------------------------------------------------------------------------------------------
# Reading an SB3 .zip without unpickling


@dataclass(frozen=True)
class SB3ZipInfo:
    """What the plain-JSON part of an SB3 .zip says: algorithm, observation shape, action space."""

    algo: str
    obs_shape: tuple[int, ...]
    action_kind: str  # "continuous" or "discrete"
    action_n: int  # action dims (continuous) or number of actions (discrete)
    seed: int | None


def read_sb3_zip(path: str | Path) -> SB3ZipInfo:
    """Inspect an SB3 model zip (no unpickling): one-line ConfigError if it is not one distracer can run."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{str(path)!r} is not a readable Stable-Baselines3 model zip") from None
    algo = _sb3_algo(data)
    obs = data.get("observation_space", {})
    act = data.get("action_space", {})
    obs_shape = tuple(int(x) for x in obs.get("_shape", ()))
    # float32: an image space that VecNormalize(norm_obs=True) replaced by its normalised bounds.
    if len(obs_shape) != 3 or obs.get("dtype") not in ("uint8", "float32"):
        raise ConfigError(f"{str(path)!r}: observation space {obs_shape} {obs.get('dtype')} is not an image "
                          "stack; distracer evaluates pixel policies only")
    act_type = str(act.get(":type:", ""))
    if "Discrete" in act_type:
        kind, n = "discrete", int(act.get("n", 0))
    elif "Box" in act_type:
        kind, n = "continuous", int(np.prod(act.get("_shape", [0])))
    else:
        raise ConfigError(f"{str(path)!r}: action space {act_type or '?'} is not Box or Discrete")
    seed = data.get("seed")
    return SB3ZipInfo(algo, obs_shape, kind, n, seed if isinstance(seed, int) else None)


def _sb3_algo(data: dict[str, Any]) -> str:
    module = str(data.get("policy_class", {}).get("__module__", ""))
    for name in ("dqn", "sac", "td3"):
        if module.startswith(f"stable_baselines3.{name}."):
            return name
    if module.startswith("stable_baselines3.common."):  # actor-critic policies: PPO or A2C
        return "ppo" if "clip_range" in data else "a2c"
    raise ConfigError(f"SB3 model with policy class from {module or '?'!r}: algorithm not recognised "
                      f"(known: {', '.join(SB3_CLASSES)})")


def sb3_env_config(info: SB3ZipInfo, action_repeat: int = 1, color: str | None = None) -> EnvConfig:
    """The distracer env that produces the observations and takes the actions the SB3 model expects.

    The zip gives the frame size and the channel count; whether those channels are grayscale frames or RGB
    triples it cannot say when the count divides by 3 (12 = 4 RGB frames or 12 gray ones), so `color`
    ('gray' or 'rgb') is then required: a ConfigError says so rather than guess. Action repeat is not in
    the zip either: it is the caller's `action_repeat` (the report prints both).
    """
    shape = info.obs_shape
    channel_first = int(np.argmin(shape)) == 0
    channels, size = (shape[0], shape[1]) if channel_first else (shape[2], shape[0])
    if info.action_kind == "continuous" and info.action_n != 2:
        raise ConfigError(f"SB3 model acts with {info.action_n}-D continuous actions; distracer's CarRacing "
                          "takes 2-D [steer, accel] (or 5 discrete actions)")
    if info.action_kind == "discrete" and info.action_n != 5:
        raise ConfigError(f"SB3 model has {info.action_n} discrete actions; distracer's CarRacing has 5")
    if color not in (None, "gray", "rgb"):
        raise ConfigError(f"--color {color!r} is unknown; allowed: gray, rgb")
    if color is None:
        if channels % 3 == 0:
            raise ConfigError(f"SB3 model takes {channels} channels: {channels // 3} RGB frame(s) or {channels} "
                              "grayscale frames; the zip does not say which: pass --color rgb or --color gray")
        color = "gray"
    if color == "rgb" and channels % 3:
        raise ConfigError(f"--color rgb needs a channel count divisible by 3; the SB3 model takes {channels}")
    stack = channels // 3 if color == "rgb" else channels
    config = EnvConfig(action_space=info.action_kind, frame_size=size, frame_stack=stack, grayscale=color == "gray",
                       action_repeat=action_repeat)
    config.validate()
    return config


# ----------------------------------------------------------------------------------------------------
# Acting with an SB3 model


@dataclass
class SB3Bundle:
    """The files an evaluation task needs, as bytes, so a remote Ray task can rebuild the model."""

    algo: str
    zip_bytes: bytes
    vecnorm_bytes: bytes | None = None
    replaced: tuple[str, ...] = ()
    """Training-only objects that could not be unpickled and were replaced (acting does not use them)."""

    def act_fn(self) -> SB3Predictor:
        return SB3Predictor(self)


def load_sb3_bundle(path: str | Path, trust_pickle: bool, vecnorm: str | Path | None = None) -> SB3Bundle:
    """Read an SB3 zip (and its vecnormalize.pkl: given, or found beside the zip) once the user trusts them."""
    path = Path(path)
    info = read_sb3_zip(path)
    if not trust_pickle:
        raise pickle_refusal(path, f"a Stable-Baselines3 {info.algo.upper()} model")
    if vecnorm is None and (path.parent / VECNORM_FILE).is_file():
        vecnorm = path.parent / VECNORM_FILE
    vecnorm_bytes = None
    if vecnorm is not None:
        vecnorm = Path(vecnorm)
        if not vecnorm.is_file():
            raise ConfigError(f"--vecnorm {str(vecnorm)!r} does not exist")
        vecnorm_bytes = vecnorm.read_bytes()
    bundle = SB3Bundle(info.algo, path.read_bytes(), vecnorm_bytes)
    predictor = bundle.act_fn()  # load once here so a broken file fails in one line before any episode starts
    bundle.replaced = predictor.replaced
    if predictor.vecnorm is not None:  # its statistics must fit the model's input, whatever the layout
        stats_shape = tuple(predictor.vecnorm.obs_rms.mean.shape)
        if sorted(stats_shape) != sorted(predictor.model_shape):
            raise ConfigError(f"{str(vecnorm)!r} holds observation statistics of shape {stats_shape}; the SB3 model "
                              f"takes {predictor.model_shape}: it belongs to another run (pass the right --vecnorm)")
    return bundle


class SB3Predictor:
    """Deterministic SB3 `predict` on distracer's channel-first observations, with VecNormalize obs stats."""

    def __init__(self, bundle: SB3Bundle):
        import stable_baselines3 as sb3

        cls = getattr(sb3, SB3_CLASSES[bundle.algo])
        self.replaced: tuple[str, ...] = ()
        try:
            self.model = cls.load(io.BytesIO(bundle.zip_bytes), device="cpu")
        except Exception as exc:  # SB3/cloudpickle raise many types for a bad file; the user needs one line
            # Often a pickled training-only object (a custom lr schedule from the user's script) whose module
            # is not installed: acting needs none of them, and SB3 loads without them given custom_objects.
            try:
                self.model = cls.load(io.BytesIO(bundle.zip_bytes), device="cpu", custom_objects=TRAINING_ONLY)
            except Exception:
                raise ConfigError(
                    f"SB3 {bundle.algo} model cannot be loaded ({type(exc).__name__}: {exc})"[:300]) from None
            self.replaced = tuple(TRAINING_ONLY)
        self.model_shape = tuple(self.model.observation_space.shape)
        self.vecnorm = None
        if bundle.vecnorm_bytes is not None:
            try:
                vecnorm = pickle.loads(bundle.vecnorm_bytes)
            except Exception as exc:
                raise ConfigError(f"vecnormalize.pkl cannot be loaded ({type(exc).__name__})") from None
            if getattr(vecnorm, "norm_obs", False):  # reward-only normalisation does not change acting
                self.vecnorm = vecnorm

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x: np.ndarray = obs
        if self.vecnorm is not None:
            x = self.vecnorm.normalize_obs(_to_layout(x, tuple(self.vecnorm.obs_rms.mean.shape)))
        action, _ = self.model.predict(_to_layout(x, self.model_shape), deterministic=True)
        return np.asarray(action)


def _to_layout(obs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Channel-first (C, H, W) -> whichever of (C, H, W) / (H, W, C) `shape` is."""
    if obs.shape == shape:
        return obs
    last = np.moveaxis(obs, 0, -1)
    if last.shape == shape:
        return last
    raise ConfigError(f"observation {obs.shape} does not fit the SB3 model's {shape}")


# ----------------------------------------------------------------------------------------------------
# Export


class _SpacesEnv(gym.Env):
    """An env with only spaces: SB3 models need one to be built; it is never stepped."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space):
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.uint8), {}

    def step(self, action: Any):
        return np.zeros(self.observation_space.shape, np.uint8), 0.0, False, False, {}


def export_sb3(checkpoint: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write a distracer PPO or DQN checkpoint as an SB3 `.zip`; returns (path written, algo)."""
    from distracer.checkpoint import learner_from_checkpoint, refuse_inside_checkpoint

    out = Path(out)
    if out.suffix != ".zip":
        raise ConfigError(f"--out {str(out)!r} must end in .zip (SB3 adds it otherwise)")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    refuse_inside_checkpoint(out, "--out")
    learner, config, _ = learner_from_checkpoint(checkpoint)
    if config.algo not in EXPORTABLE:
        raise ConfigError(f"a {config.algo} checkpoint cannot be exported to SB3: SB3's SAC uses separate actor and "
                          "critic CNNs, distracer's SAC+DrQ one shared DrQ encoder; only ppo and dqn export")
    obs_space = spaces.Box(0, 255, tuple(learner.obs_shape), np.uint8)
    env = _SpacesEnv(obs_space, _action_space(learner.action_spec))
    build = _build_sb3_ppo if config.algo == "ppo" else _build_sb3_dqn
    model = build(env, config, learner)
    check_same_actions(learner.policy, model, obs_space)
    model.save(str(out))
    return out, config.algo


def _action_space(spec: Any) -> spaces.Space:
    if spec.kind == "discrete":
        return spaces.Discrete(spec.n)
    return spaces.Box(-1.0, 1.0, (spec.n,), np.float32)


def _build_sb3_ppo(env: gym.Env, config: Any, learner: Any) -> Any:
    from stable_baselines3 import PPO

    from distracer.algos.ppo import ACTIVATIONS, to_sb3_state_dict

    c = config.ppo
    # The training hyperparameters that mean the same in SB3, so `PPO.load(...).learn()` continues alike.
    model = PPO("CnnPolicy", env, learning_rate=c.learning_rate, n_steps=c.num_steps, batch_size=c.minibatch_size,
                n_epochs=c.n_epochs, gamma=c.gamma, gae_lambda=c.gae_lambda, clip_range=c.clip_range,
                clip_range_vf=c.clip_range_vf, ent_coef=c.ent_coef, vf_coef=c.vf_coef,
                max_grad_norm=c.max_grad_norm, target_kl=c.target_kl, normalize_advantage=c.normalize_advantage,
                use_sde=learner.policy.use_sde, sde_sample_freq=c.sde_sample_freq, seed=config.seed, device="cpu",
                policy_kwargs={"features_extractor_kwargs": {"features_dim": c.features_dim},
                               "log_std_init": c.log_std_init, "ortho_init": c.ortho_init,
                               "net_arch": {"pi": list(c.net_arch_pi), "vf": list(c.net_arch_vf)},
                               "activation_fn": ACTIVATIONS[c.activation]})
    _load_strict(model.policy, to_sb3_state_dict(learner.policy))
    return model


def _build_sb3_dqn(env: gym.Env, config: Any, learner: Any) -> Any:
    from stable_baselines3 import DQN

    from distracer.algos.dqn import to_sb3_state_dict

    c = config.dqn
    # buffer_size is kept tiny: the export carries weights, not replay; pass buffer_size to DQN.load to train.
    model = DQN("CnnPolicy", env, learning_rate=c.learning_rate, batch_size=c.batch_size, gamma=c.gamma,
                buffer_size=1000, learning_starts=0, tau=c.tau, max_grad_norm=c.max_grad_norm,
                exploration_initial_eps=c.eps_start, exploration_final_eps=c.eps_end,
                exploration_fraction=c.exploration_fraction, seed=config.seed, device="cpu",
                policy_kwargs={"features_extractor_kwargs": {"features_dim": c.features_dim}})
    _load_strict(model.policy, to_sb3_state_dict(learner.policy, full=True))
    return model


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"weights do not fit the SB3 policy: {first}") from None


def check_same_actions(policy: Any, model: Any, obs_space: spaces.Box, n: int = 8, seed: int = 0) -> None:
    """Refuse an export whose SB3 model would not act as the distracer policy does on random frames."""
    obs = np.random.default_rng(seed).integers(0, 256, (n, *obs_space.shape), dtype=np.uint8)
    with torch.no_grad():
        ours, _ = policy.act(torch.as_tensor(obs), explore=False)
    theirs, _ = model.predict(obs, deterministic=True)
    ours = ours.cpu().numpy()
    same = np.array_equal(ours, theirs) if ours.dtype.kind in "iu" else np.allclose(ours, theirs, atol=1e-5)
    if not same:
        raise ConfigError("the exported SB3 model does not choose the distracer policy's actions; nothing written")


# ----------------------------------------------------------------------------------------------------
# CLI


def cmd_export(args: argparse.Namespace) -> int:
    out, algo = export_sb3(args.checkpoint, args.out)
    cls = SB3_CLASSES[algo]
    print(f"distracer: exported {algo} to {out} (open with stable_baselines3.{cls}.load; same actions checked)")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a distracer PPO or DQN checkpoint to a Stable-Baselines3 .zip")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint dir, run dir, or Tune trial/checkpoint dir")
    p.add_argument("--out", required=True, metavar="FILE.zip", help="SB3 model file to write")
    p.set_defaults(func=cmd_export)
