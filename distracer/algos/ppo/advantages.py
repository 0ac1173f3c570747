"""GAE (Schulman et al. 2016) with SB3's time-limit bootstrap, the return normaliser, explained variance."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    next_value: np.ndarray,
    final_values: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(lambda) advantages and lambda-returns for [T, N] arrays (Schulman et al. 2016).

    Step t bootstraps from 0 if terminated[t], from final_values[t] if truncated[t] (the time limit is not
    part of the MDP, so the cut episode's value continues), else from values[t+1] (next_value at t=T-1).
    The advantage recursion stops at either kind of episode end. Returns (advantages, returns) float32.
    """
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    terminated = np.asarray(terminated, bool)
    truncated = np.asarray(truncated, bool) & ~terminated
    num_steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last = np.zeros_like(rewards[0])
    final_values = np.asarray(final_values, np.float64)
    for t in reversed(range(num_steps)):
        following = np.asarray(next_value, np.float64) if t == num_steps - 1 else values[t + 1]
        bootstrap = np.where(terminated[t], 0.0, np.where(truncated[t], final_values[t], following))
        delta = rewards[t] + gamma * bootstrap - values[t]
        continues = ~(terminated[t] | truncated[t])
        last = delta + gamma * lam * continues * last
        advantages[t] = last
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)


class ReturnNormalizer:
    """The reward half of SB3's VecNormalize: divide rewards by the running std of discounted returns.

    Per env column it keeps a running discounted return, updates running mean/var statistics with it each
    step (parallel-variance update, as SB3's RunningMeanStd), and resets it at episode ends.
    """

    def __init__(self, gamma: float, epsilon: float, clip: float):
        self.gamma, self.epsilon, self.clip = gamma, epsilon, clip
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4
        self.returns = np.zeros(0, np.float64)

    def _update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, batch_count = float(x.mean()), float(x.var()), x.size
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean, self.var, self.count = self.mean + delta * batch_count / total, m2 / total, total

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        if self.returns.shape != rewards.shape[1:]:
            self.returns = np.zeros(rewards.shape[1:], np.float64)  # the number of envs changed: restart
        out = np.empty_like(rewards, dtype=np.float32)
        for t in range(rewards.shape[0]):
            self.returns = self.returns * self.gamma + rewards[t]
            self._update(self.returns)
            out[t] = np.clip(rewards[t] / math.sqrt(self.var + self.epsilon), -self.clip, self.clip)
            self.returns[dones[t]] = 0.0
        return out

    @property
    def scale(self) -> float:
        return math.sqrt(self.var + self.epsilon)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count,
                "returns": torch.as_tensor(self.returns, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])
        self.returns = state["returns"].cpu().numpy().astype(np.float64)


def explained_variance(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true] (SB3); nan when y_true is constant."""
    var_y = float(np.var(y_true))
    return float("nan") if var_y == 0 else float(1.0 - np.var(y_true - y_pred) / var_y)
