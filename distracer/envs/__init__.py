"""The shared CarRacing environment layer: one factory, `make_env`, for workers, evaluation, benchmarks and tests."""

from __future__ import annotations

import os

import gymnasium as gym
from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, RecordEpisodeStatistics, ResizeObservation

from distracer.envs.config import EnvConfig
from distracer.envs.spaces import ActionSpec
from distracer.envs.wrappers import (
    ActionRepeat,
    DiscreteActions,
    LapEndTermination,
    NoProgressPenalty,
    NoProgressTermination,
    RestOfEpisodePenalty,
    SeedOnFirstReset,
    SkippedTilePenalty,
    StackedChannels,
    StandstillTermination,
    SteerAccelActions,
)

# pygame must not look for a display on servers, in containers or in CI.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

STOCK_ID = "CarRacing-v3"
FAST_ID = "distracer/CarRacingFast-v3"

if FAST_ID not in gym.registry:
    gym.register(
        id=FAST_ID,
        entry_point="distracer.envs.fast_car_racing:FastCarRacing",
        max_episode_steps=1000,
        reward_threshold=900,
    )


def make_env(
    config: EnvConfig | None = None,
    seed: int | None = None,
    *,
    stock: bool | None = None,
    render_mode: str | None = None,
    training: bool = False,
) -> gym.Env:
    """Build CarRacing-v3 with distracer's wrappers.

    Order matters: episode statistics sit on the raw env so `info["episode"]` always holds the
    reference return and length; action repeat sits below the pixel wrappers so only returned
    frames are processed.

    Args:
        config: wrapper settings; defaults to `EnvConfig()`.
        seed: seeds the first reset (the track) and the action space.
        stock: force the stock (True) or fast (False) simulator; None follows `config.fast`.
        render_mode: passed to the env, e.g. "rgb_array" for full-resolution video frames.
        training: a rollout worker's env: adds the training-only `no_progress_*`, `standstill_frames`,
            `lap_end_fraction` and `skip_penalty` rules of `config`. Evaluation leaves it False, so scores are
            always whole stock episodes.
    """
    config = config or EnvConfig()
    config.validate()
    use_stock = (not config.fast) if stock is None else stock
    env = gym.make(STOCK_ID if use_stock else FAST_ID, render_mode=render_mode)
    ends_early = training and config.no_progress_frames > 0
    if ends_early:
        env = NoProgressTermination(env, config.no_progress_frames)
    stands_still = training and config.standstill_frames > 0
    if stands_still:
        env = StandstillTermination(env, config.standstill_frames)
    if training and config.lap_end_fraction:
        env = LapEndTermination(env, config.lap_end_fraction)
    env = RecordEpisodeStatistics(env)
    if ends_early and config.no_progress_penalty:
        env = NoProgressPenalty(env, config.no_progress_penalty)
    if stands_still:
        env = RestOfEpisodePenalty(env)
    if training and config.skip_penalty:
        env = SkippedTilePenalty(env, config.skip_penalty)
    env = SteerAccelActions(env) if config.action_space == "continuous" else DiscreteActions(env)
    if config.action_repeat > 1:
        env = ActionRepeat(env, config.action_repeat)
    if config.frame_size != env.observation_space.shape[0]:
        env = ResizeObservation(env, (config.frame_size, config.frame_size))
    if config.grayscale:
        env = GrayscaleObservation(env, keep_dim=False)
    env = FrameStackObservation(env, config.frame_stack)
    env = StackedChannels(env, config.channel_order)
    return SeedOnFirstReset(env, seed)


def env_spaces(config: EnvConfig) -> tuple[tuple[int, int, int], ActionSpec]:
    """Observation shape (C, H, W) and action spec of the configured env, from a stock env that is never stepped
    (what learners, replays and checkpoints are built for)."""
    env = make_env(config, stock=True)
    try:
        return tuple(env.observation_space.shape), ActionSpec.from_space(env.action_space)
    finally:
        env.close()


__all__ = ["ActionSpec", "EnvConfig", "env_spaces", "make_env", "STOCK_ID", "FAST_ID"]
