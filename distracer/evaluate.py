"""Evaluation on the reference environment: the unmodified CarRacing-v3 episode return.

Always the stock simulator, a deterministic policy, and seeds from `eval.seed` upward, which training
never uses. Scores are the raw env return recorded by `RecordEpisodeStatistics` beneath every wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from distracer.algos import build_policy
from distracer.algos.base import PolicyWeights
from distracer.envs import EnvConfig, make_env


@dataclass
class EvalResult:
    """Per-episode reference returns and lengths, with their seeds."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    def merge(self, other: EvalResult) -> EvalResult:
        return EvalResult(self.returns + other.returns, self.lengths + other.lengths, self.seeds + other.seeds)

    def summary(self) -> str:
        return f"{self.mean:.1f} ± {self.std:.1f} over {len(self.returns)} episodes"


def evaluate_policy(weights: PolicyWeights, env_config: EnvConfig, seeds: list[int]) -> EvalResult:
    """Run one deterministic episode on the stock env per seed."""
    torch.set_num_threads(1)
    policy = build_policy(weights, device="cpu")
    result = EvalResult()
    for seed in seeds:
        env = make_env(env_config, seed=seed, stock=True)
        obs, _ = env.reset()
        while True:
            with torch.no_grad():
                action, _ = policy.act(torch.as_tensor(obs[None]), explore=False)
            obs, _, terminated, truncated, info = env.step(action.numpy()[0])
            if terminated or truncated:
                break
        env.close()
        result.returns.append(float(np.asarray(info["episode"]["r"]).item()))
        result.lengths.append(int(np.asarray(info["episode"]["l"]).item()))
        result.seeds.append(seed)
    return result
