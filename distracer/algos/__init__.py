"""The learners and their registry: each algorithm declares, once, what the runtime needs to know of it.

Adding an algorithm touches its own module (a config dataclass, a `Learner`, a `Policy`) and one entry
of `SPECS`; the runtime (`distracer.runtime`) and the config loader only read the spec (Acme's builder
idea: the algorithm declares, the runtime wires).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from distracer.algos.base import ActionSpec, DeviceConfig, Learner, OffPolicyConfig, Policy, PolicyWeights
from distracer.errors import ConfigError


@dataclass(frozen=True)
class AlgoSpec:
    """What the runtime knows about one algorithm. Classes are named, not imported, so that the registry
    loads without torch-heavy modules (they load on first use)."""

    module: str
    """Module holding the classes below."""
    config: str
    """Config dataclass: fields with docstrings, `validate()` (one-line ConfigError), and
    `derive(total_env_steps, num_envs)` for the settings that follow from the run (e.g. a schedule horizon)."""
    learner: str
    """`distracer.algos.base.Learner` subclass: networks, optimisers, `update()`."""
    policy: str
    """`distracer.algos.base.Policy` subclass: the acting part that workers and evaluation rebuild."""
    off_policy: bool
    """True: rollout workers stream fragments into replay shards and the learner samples batches at the
    config's replay ratio (`OffPolicyConfig`: replay_ratio after learning_starts). False: on-policy, each
    worker returns a rollout of `num_steps` per round and the learner trains on the round (PPO)."""
    action_space: str | None = None
    """The `env.action_space` it needs ('continuous' or 'discrete'); None: either."""

    def load(self, attr: str) -> Any:
        """The class named by field `attr` ('config', 'learner' or 'policy')."""
        return getattr(importlib.import_module(self.module), getattr(self, attr))


SPECS: dict[str, AlgoSpec] = {
    "sac_drq": AlgoSpec("distracer.algos.sac_drq", "SACConfig", "SACDrQLearner", "SACPolicy",
                        off_policy=True, action_space="continuous"),
    "ppo": AlgoSpec("distracer.algos.ppo", "PPOConfig", "PPOLearner", "PPOPolicy", off_policy=False),
    "dqn": AlgoSpec("distracer.algos.dqn", "DQNConfig", "DQNLearner", "DQNPolicy",
                    off_policy=True, action_space="discrete"),
}
ALGOS = tuple(SPECS)


def spec(algo: str) -> AlgoSpec:
    """The spec of `algo`; ConfigError (one line) for an unknown name."""
    if algo not in SPECS:
        raise ConfigError(f"algo={algo!r} is unknown; allowed: {', '.join(ALGOS)}")
    return SPECS[algo]


def config_class(algo: str) -> type:
    return spec(algo).load("config")


def make_learner(
    algo: str,
    config: Any,
    obs_shape: tuple[int, int, int],
    action_spec: ActionSpec,
    device: DeviceConfig | None = None,
    seed: int = 0,
) -> Learner:
    """Build the learner of `algo`; refuses action spaces the algorithm cannot use."""
    cls = spec(algo).load("learner")
    return cls(config, obs_shape, action_spec, device or DeviceConfig(), seed)


def build_policy(weights: PolicyWeights, device: str = "cpu") -> Policy:
    """Rebuild a worker/evaluation policy from published weights."""
    cls = spec(weights.algo).load("policy")
    policy = cls(**weights.spec)
    policy.load_state_dict(weights.state)
    return policy.to(device).eval()


__all__ = ["ALGOS", "SPECS", "ActionSpec", "AlgoSpec", "DeviceConfig", "Learner", "OffPolicyConfig", "Policy",
           "PolicyWeights", "build_policy", "config_class", "make_learner", "spec"]
