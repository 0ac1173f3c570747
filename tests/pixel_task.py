"""A tiny pixel task the learner tests train on: the right action is visible in the image.

A bright block sits in the left or right half of every frame. Steering towards it pays: continuous
reward 1 - |steer - side| / 2 (side = -1 left, +1 right), discrete reward 1 for action `left` (0) or
`right` (1) on the matching side. One-step episodes, so a random policy averages 0.5 (continuous) or
0.2 (discrete) and only a policy that reads the pixels gets near 1.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class SidePixelTask(gym.Env):
    def __init__(self, action_kind: str = "continuous", frame_size: int = 36, stack: int = 4):
        self.action_kind = action_kind
        self.frame_size = frame_size
        self.stack = stack
        self.observation_space = spaces.Box(0, 255, (stack, frame_size, frame_size), np.uint8)
        if action_kind == "continuous":
            self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        else:
            self.action_space = spaces.Discrete(5)
        self._side = 1

    def _obs(self) -> np.ndarray:
        obs = np.full(self.observation_space.shape, 40, np.uint8)
        half = self.frame_size // 2
        cols = slice(2, half - 2) if self._side < 0 else slice(half + 2, self.frame_size - 2)
        obs[:, 8:-8, cols] = 220
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._side = int(self.np_random.choice([-1, 1]))
        return self._obs(), {}

    def reward(self, action) -> float:
        if self.action_kind == "continuous":
            return float(1.0 - abs(float(np.clip(action[0], -1, 1)) - self._side) / 2.0)
        return float(int(action) == (0 if self._side < 0 else 1))

    def step(self, action):
        return self._obs(), self.reward(action), True, False, {}


def evaluate_learner(learner, action_kind: str, episodes: int = 100, seed: int = 123) -> float:
    """Mean reward of the learner's deterministic policy over fresh one-step episodes."""
    env = SidePixelTask(action_kind, frame_size=learner.obs_shape[1], stack=learner.obs_shape[0])
    total = 0.0
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        action = learner.act(obs[None], explore=False)[0]
        total += env.reward(action)
        obs, _ = env.reset()
    return total / episodes


def transition_batch(action_kind: str, actions: np.ndarray, rng: np.random.Generator, frame_size: int = 36) -> dict:
    """An off-policy batch of one-step transitions for the given actions (terminal, so discount 0)."""
    env = SidePixelTask(action_kind, frame_size)
    obs, rewards = [], []
    for a in actions:
        env.reset(seed=int(rng.integers(2**31)))
        obs.append(env._obs())
        rewards.append(env.reward(a))
    obs_arr = np.stack(obs)
    return {
        "obs": obs_arr,
        "action": np.asarray(actions),
        "reward": np.asarray(rewards, np.float32),
        "next_obs": obs_arr.copy(),
        "discount": np.zeros(len(actions), np.float32),
    }
