"""The one protocol every learner follows, so the runtime drives SAC+DrQ, PPO and DQN alike.

A learner owns the networks, optimisers and counters of one algorithm. Rollout workers never hold a
learner: they hold a `Policy` (the acting part only) rebuilt from versioned `PolicyWeights`.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from distracer.envs.spaces import ActionSpec  # the env layer defines it; learners are built for it
from distracer.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "auto")

# Batches from Ray's object store are read-only numpy views; the learner never writes to them, and copying
# to silence torch's warning would cost a memcpy per batch.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient became NaN/inf; the update was not applied."""


@dataclass
class DeviceConfig:
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: str = "fp32"
    """'fp32'; 'bf16' or 'fp16' mixed precision on CUDA (fp16 uses a grad scaler); 'auto' picks bf16 where
    the GPU has it, else fp16 on CUDA, fp32 on CPU."""
    threads: int = 0
    """Torch CPU threads of the learner process; 0 = `resources.learner_cpus` (at least 1). More than it reserves
    suits exact synchronous PPO on a CPU, where workers and learner take turns on the same cores."""

    def validate(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"learner.threads={self.threads} must be >= 0 (0: resources.learner_cpus)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"learner.precision={self.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"learner.device={self.device!r} is unknown; allowed: auto, cpu, cuda, cuda:N")

    def check_available(self) -> None:
        """Refuse a CUDA device where the learner runs (not where the config is read: a cluster's head
        may have no GPU while its learner node does)."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"learner.device={self.device!r} but this machine has no CUDA GPU")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for full fp32. Mixed precision is CUDA-only."""
        if self.torch_device().type != "cuda" or self.precision == "fp32":
            return None
        if self.precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if self.precision == "bf16" else torch.float16


@dataclass
class PolicyWeights:
    """A compact, CPU-only snapshot of the acting part of a learner, tagged with its version.

    Workers rebuild a `Policy` from it with `distracer.algos.build_policy`; `spec` holds what that needs.
    """

    algo: str
    version: int
    state: dict[str, torch.Tensor]
    spec: dict[str, Any] = field(default_factory=dict)


class OffPolicyConfig(Protocol):
    """What the runtime reads from the config of an off-policy algorithm (`AlgoSpec.off_policy`): the replay
    layout and the rate limit. SACConfig and DQNConfig have these fields; a new off-policy algorithm needs them."""

    batch_size: int
    """Transitions per update, sampled from the replay."""
    gamma: float
    """Discount the replay folds into each sample's n-step `discount`."""
    n_step: int
    """Steps in the n-step return the replay builds."""
    replay_ratio: float
    """The replay ratio: gradient updates per env step, held by the runtime."""
    learning_starts: int
    """Env steps collected (random actions on a fresh run) before the first update."""

    def worker_epsilon(self, env_steps: int, worker_index: int, num_workers: int) -> float | None:
        """Epsilon-greedy rate of one rollout worker at `env_steps`, or None for the policy's own exploration."""


class Policy(nn.Module, abc.ABC):
    """The acting part of an algorithm, run by rollout workers and evaluation on CPU or GPU."""

    @abc.abstractmethod
    def act(self, obs: torch.Tensor, explore: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 (B, C, H, W) -> actions (B, dim) float or (B,) long, and extras (e.g. PPO log-prob, value)."""

    def set_seed(self, seed: int) -> None:  # noqa: B027 - optional hook
        """Seed the exploration noise of this copy (each rollout worker's differs, reproducibly)."""


class Learner(abc.ABC):
    """What the runtime needs from an algorithm. Subclasses set `algo`, `policy` and implement the rest."""

    algo: str = ""
    policy: Policy

    def __init__(self, obs_shape: tuple[int, int, int], action_spec: ActionSpec, device: DeviceConfig, seed: int):
        device.validate()
        device.check_available()
        self.obs_shape = tuple(obs_shape)
        self.action_spec = action_spec
        self.device_config = device
        self.device = device.torch_device()
        self.amp_dtype = device.amp_dtype()
        # A scaler only matters for fp16; for bf16/fp32 it is a pass-through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.num_updates = 0
        self.weights_version = 0

    # ----- acting -----
    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """Actions for a batch of uint8 channel-first observations."""
        actions, _ = self.policy.act(self.to_tensor(obs), explore)
        return actions.cpu().numpy()

    # ----- learning -----
    @abc.abstractmethod
    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One update from a batch; returns metrics. Raises NonFiniteLossError and applies nothing on NaN/inf."""

    # ----- weights for workers -----
    @abc.abstractmethod
    def policy_spec(self) -> dict[str, Any]:
        """Constructor arguments that `build_policy` needs to rebuild `self.policy` on a worker."""

    def policy_weights(self) -> PolicyWeights:
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.policy.state_dict().items()}
        return PolicyWeights(self.algo, self.weights_version, state, self.policy_spec())

    # ----- checkpointing -----
    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        """Every network and optimiser whose state a checkpoint must hold."""

    def extra_state(self) -> dict[str, Any]:
        """Tensors and scalars outside modules (e.g. log-alpha is a module param; schedules' counters here)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def state_dict(self) -> dict[str, Any]:
        """Everything for an exact continuation: networks, targets, optimisers, scaler, counters, RNG."""
        return {
            "algo": self.algo,
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "scaler": self.scaler.state_dict(),
            "num_updates": self.num_updates,
            "weights_version": self.weights_version,
            "torch_rng": self.generator.get_state(),
            "np_rng": self.np_rng.bit_generator.state,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Optimisers keep the state tensors they are given: copy, so two learners loaded from one
        # in-memory state never share Adam moments.
        state = copy.deepcopy(state)
        if state.get("algo") != self.algo:
            raise ConfigError(f"checkpoint holds a {state.get('algo')!r} learner, not {self.algo!r}")
        modules = self.modules()
        missing = set(modules) - set(state["modules"])
        if missing:
            raise ConfigError(f"checkpoint lacks learner parts: {', '.join(sorted(missing))}")
        for name, m in modules.items():
            m.load_state_dict(state["modules"][name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.num_updates = int(state["num_updates"])
        self.weights_version = int(state["weights_version"])
        self.generator.set_state(state["torch_rng"].cpu() if self.device.type == "cpu" else state["torch_rng"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.load_extra_state(state.get("extra", {}))

    # ----- helpers for subclasses -----
    def to_tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """numpy -> tensor on the learner's device, keeping dtype (uint8 pixels stay uint8 until the net)."""
        if isinstance(array, torch.Tensor):
            return array.to(self.device, non_blocking=True)
        return torch.as_tensor(np.asarray(array), device=self.device)

    def autocast(self):
        """Mixed-precision context on CUDA when configured; a no-op otherwise."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def check_finite(metrics: dict[str, torch.Tensor]) -> None:
    """Raise NonFiniteLossError naming the first NaN/inf loss or gradient norm. Call before any optimiser step."""
    for name, value in metrics.items():
        if not torch.isfinite(value).all():
            shown = value.item() if value.numel() == 1 else "non-finite"
            raise NonFiniteLossError(f"{name} is {shown}; update skipped, weights unchanged")


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict, for the policy spec and checkpoints."""
    return asdict(config)
