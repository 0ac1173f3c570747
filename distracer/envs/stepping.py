"""Stepping a worker's envs: the one loop body that replay fragments (off-policy) and PPO rollouts are both
built from. Each env is reset as soon as its episode ends, and the finished episode's reference return is
read from `RecordEpisodeStatistics` (which `make_env` puts beneath every other wrapper)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPISODE_ENDS = ("time_limit", "lap", "lap_tiles_missed", "off_playfield", "standstill", "no_progress", "other")
"""Why a training episode ended, as `episode_end` names it; an int8 code is its index here (PPO rollouts)."""


@dataclass
class EnvStep:
    """One env's step."""

    action: np.ndarray
    """The action taken (as the env received it)."""
    obs: np.ndarray
    """The observation the step returned (the episode's last one when it ended)."""
    reward: float
    """The step's reward (summed over the action repeat)."""
    terminated: bool
    """The episode ended in a terminal state (no bootstrap)."""
    truncated: bool
    """The episode was cut (time limit)."""
    next_obs: np.ndarray
    """The observation the env is in now: `obs`, or the first of a new episode after the reset."""
    episode: tuple[float, int] | None = None
    """(return, length) of the episode that ended at this step, when the env records them."""
    end: str | None = None
    """Why the episode ended at this step (one of EPISODE_ENDS), else None."""

    @property
    def reset(self) -> bool:
        return self.terminated or self.truncated


def episode_stats(info: dict[str, Any]) -> tuple[float, int] | None:
    """(return, length) from `RecordEpisodeStatistics`' info["episode"], or None."""
    episode = info.get("episode")
    if not episode:
        return None
    return float(np.asarray(episode["r"]).reshape(-1)[0]), int(np.asarray(episode["l"]).reshape(-1)[0])


def episode_end(terminated: bool, truncated: bool, info: dict[str, Any]) -> str:
    """Why an episode ended, from its last step: distracer's training-only rules first (their wrappers set
    info["standstill"] / info["no_progress"] / info["lap_end"]: a lap driven with tiles missed), then CarRacing's
    own ends (info["lap_finished"]: True for a lap completed, False for leaving the playfield, -100), then the
    time limit (1000 frames). "other": a terminal step none of these explain (another env)."""
    if info.get("standstill"):
        return "standstill"
    if info.get("no_progress"):
        return "no_progress"
    if info.get("lap_end"):
        return "lap_tiles_missed"
    if terminated and "lap_finished" in info:
        return "lap" if info["lap_finished"] else "off_playfield"
    return "time_limit" if truncated and not terminated else "other"


def step_envs(envs: list[Any], actions: np.ndarray) -> list[EnvStep]:
    """Step env i with actions[i]; reset the envs whose episode ended. Returns one `EnvStep` per env."""
    out = []
    for env, action in zip(envs, actions):
        obs, reward, terminated, truncated, info = env.step(action)
        step = EnvStep(action, obs, float(reward), bool(terminated), bool(truncated), obs)
        if step.reset:
            step.episode = episode_stats(info)
            step.end = episode_end(step.terminated, step.truncated, info)
            step.next_obs, _ = env.reset()
        out.append(step)
    return out
