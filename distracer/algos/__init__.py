"""The learners and their registry: name -> (config class, learner class, policy class)."""

from __future__ import annotations

import importlib
from typing import Any

from distracer.algos.base import ActionSpec, DeviceConfig, Learner, Policy, PolicyWeights
from distracer.errors import ConfigError

# name -> (module, config class, learner class, policy class); modules load lazily.
_REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "sac_drq": ("distracer.algos.sac_drq", "SACConfig", "SACDrQLearner", "SACPolicy"),
    "ppo": ("distracer.algos.ppo", "PPOConfig", "PPOLearner", "PPOPolicy"),
    "dqn": ("distracer.algos.dqn", "DQNConfig", "DQNLearner", "DQNPolicy"),
}
ALGOS = tuple(_REGISTRY)


def _lookup(algo: str, index: int) -> Any:
    if algo not in _REGISTRY:
        raise ConfigError(f"algo={algo!r} is unknown; allowed: {', '.join(ALGOS)}")
    module = importlib.import_module(_REGISTRY[algo][0])
    return getattr(module, _REGISTRY[algo][index])


def config_class(algo: str) -> type:
    return _lookup(algo, 1)


def make_learner(
    algo: str,
    config: Any,
    obs_shape: tuple[int, int, int],
    action_spec: ActionSpec,
    device: DeviceConfig | None = None,
    seed: int = 0,
) -> Learner:
    """Build the learner of `algo`; refuses action spaces the algorithm cannot use."""
    cls = _lookup(algo, 2)
    return cls(config, obs_shape, action_spec, device or DeviceConfig(), seed)


def build_policy(weights: PolicyWeights, device: str = "cpu") -> Policy:
    """Rebuild a worker/evaluation policy from published weights."""
    cls = _lookup(weights.algo, 3)
    policy = cls(**weights.spec)
    policy.load_state_dict(weights.state)
    return policy.to(device).eval()


__all__ = ["ALGOS", "ActionSpec", "DeviceConfig", "Learner", "Policy", "PolicyWeights", "build_policy",
           "config_class", "make_learner"]
