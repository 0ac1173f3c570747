"""The wrappers every part of distracer shares. Each works alone on any CarRacing-v3 env.

Gymnasium's own wrappers do the generic parts (grayscale, resize, frame stack, episode statistics);
the ones here are what CarRacing needs and Gymnasium lacks.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# The seed project's 5 discrete actions, in its order, as CarRacing [steer, gas, brake].
DISCRETE_ACTIONS = np.array(
    [
        [-1.0, 0.0, 0.0],  # left
        [1.0, 0.0, 0.0],  # right
        [0.0, 1.0, 0.0],  # gas
        [0.0, 0.0, 0.8],  # brake
        [0.0, 0.0, 0.0],  # no-op
    ],
    dtype=np.float32,
)
DISCRETE_ACTION_NAMES = ("left", "right", "gas", "brake", "no-op")


class DiscreteActions(gym.ActionWrapper):
    """Discrete(5): left, right, gas, brake, no-op, mapped to CarRacing's [steer, gas, brake]."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_space = spaces.Discrete(len(DISCRETE_ACTIONS))

    def action(self, action: Any) -> np.ndarray:
        index = int(action)
        if not 0 <= index < len(DISCRETE_ACTIONS):
            raise ValueError(f"discrete action {action!r} is out of range 0..{len(DISCRETE_ACTIONS) - 1}")
        return DISCRETE_ACTIONS[index].copy()


STEER, ACCEL = 0, 1  # the columns of a continuous [steer, accel] action


def steer_accel_to_native(action: np.ndarray) -> np.ndarray:
    """[steer, accel] in [-1, 1]^2 -> [steer, gas, brake] with gas=max(accel,0), brake=max(-accel,0).

    One accel axis means the agent can never press gas and brake at once.
    """
    action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
    steer, accel = action[..., STEER], action[..., ACCEL]
    return np.stack([steer, np.maximum(accel, 0.0), np.maximum(-accel, 0.0)], axis=-1).astype(np.float32)


class SteerAccelActions(gym.ActionWrapper):
    """Box([-1,-1], [1,1]): [steer, accel], mapped to CarRacing's [steer, gas, brake]."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        return steer_accel_to_native(action)


class ActionRepeat(gym.Wrapper):
    """Repeat each action `repeat` times, summing rewards, stopping at the episode's end.

    On an env that can skip drawing (distracer's fast CarRacing exposes `render_observations` and
    `observe()`), only the frame that is returned gets drawn: intermediate frames are never seen.
    """

    def __init__(self, env: gym.Env, repeat: int):
        if repeat < 1:
            raise ValueError(f"action_repeat={repeat} must be >= 1")
        super().__init__(env)
        self.repeat = repeat
        base = env.unwrapped
        self._skippable = hasattr(base, "render_observations") and hasattr(base, "observe")

    def step(self, action: Any):
        base = self.env.unwrapped
        total = 0.0
        for i in range(self.repeat):
            last = i == self.repeat - 1
            if self._skippable:
                base.render_observations = last
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                if self._skippable and not last:
                    obs = base.observe()
                break
        if self._skippable:
            base.render_observations = True
        return obs, total, terminated, truncated, info


class StackedChannels(gym.ObservationWrapper):
    """Fold a frame stack (k, H, W[, 3]) into channels: (C, H, W) or (H, W, C) with C = k or 3k."""

    def __init__(self, env: gym.Env, channel_order: str = "first"):
        super().__init__(env)
        if channel_order not in ("first", "last"):
            raise ValueError(f"channel_order={channel_order!r} is unknown; allowed: first, last")
        self.channel_order = channel_order
        shape = env.observation_space.shape
        k, h, w = shape[:3]
        c = k * (shape[3] if len(shape) == 4 else 1)
        new_shape = (c, h, w) if channel_order == "first" else (h, w, c)
        self.observation_space = spaces.Box(0, 255, shape=new_shape, dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        obs = np.asarray(observation)
        if obs.ndim == 4:  # (k, H, W, 3) -> (k*3, H, W)
            obs = np.moveaxis(obs, -1, 1).reshape(-1, *obs.shape[1:3])
        if self.channel_order == "last":
            obs = np.moveaxis(obs, 0, -1)
        return np.ascontiguousarray(obs)


class SeedOnFirstReset(gym.Wrapper):
    """Seed the first reset (track) and the action space, so `make_env(seed=s)` alone is reproducible.

    Later resets without a seed continue the env's own RNG, so a sequence of episodes is reproducible too.
    """

    def __init__(self, env: gym.Env, seed: int | None):
        super().__init__(env)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


class NoProgressTermination(gym.Wrapper):
    """End an episode (``terminated=True``, ``info["no_progress"] = True``) after `limit` consecutive frames
    without a positive reward, i.e. without reaching a new track tile: a car that has stopped, spun out or
    left the road. Training only, on the raw env (frames, not agent steps), beneath the episode statistics, so
    `info["episode"]` still holds the unmodified return of the shortened episode.

    A stuck car otherwise burns the rest of its 1,000 frames at -0.1 each; ending it spends the samples on
    driving. The same idea as the "die" rule of well-known CarRacing PPO agents (e.g. xtma/pytorch_car_caring
    ends an episode once the mean reward of the last 100 steps is <= -0.1).
    """

    def __init__(self, env: gym.Env, limit: int):
        if limit < 1:
            raise ValueError(f"no-progress limit={limit} must be >= 1 frame")
        super().__init__(env)
        self.limit = limit
        self._since_progress = 0

    def reset(self, **kwargs: Any):
        self._since_progress = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._since_progress = 0 if reward > 0 else self._since_progress + 1
        if self._since_progress >= self.limit and not (terminated or truncated):
            terminated = True
            info = {**info, "no_progress": True}
        return obs, reward, terminated, truncated, info


# CarRacing's reward charges every frame -0.1 (and gives 1000/N per new tile).
TIME_PENALTY_PER_FRAME = 0.1
# Below this hull speed (Box2D m/s; a driving car does 30-90) the car counts as standing still.
STANDSTILL_SPEED = 1.0


def car_speed(env: gym.Env) -> float:
    """The car's hull speed in Box2D m/s (what CarRacing's own speed bar shows), through any wrappers."""
    vx, vy = env.unwrapped.car.hull.linearVelocity
    return float(np.hypot(vx, vy))


class StandstillTermination(gym.Wrapper):
    """End an episode (``terminated=True``, ``info["standstill"] = True``) once the car's hull speed has been
    below `speed` for `limit` consecutive frames, and report the frames the time limit had left
    (``info["frames_left"]``). Training only, on the raw env (frames, not agent steps), beneath the episode
    statistics, so `info["episode"]` holds the unmodified return of the shortened episode.

    Why: a PPO policy that brakes before a corner can brake to a halt and keep braking; its exploration noise
    never reaches the gas, so it stands there for the rest of the episode, learning nothing (docs/RESULTS.md:
    7 of 10 evaluation tracks lost this way). Unlike `NoProgressTermination` this leaves a car that is moving,
    on the road or off it, alone.
    """

    def __init__(self, env: gym.Env, limit: int, speed: float = STANDSTILL_SPEED, max_frames: int | None = None):
        if limit < 1:
            raise ValueError(f"standstill limit={limit} must be >= 1 frame")
        super().__init__(env)
        self.limit, self.speed = limit, float(speed)
        spec_limit = env.spec.max_episode_steps if env.spec is not None else None
        self.max_frames = max_frames or spec_limit or 1000
        self._frames = self._still = 0

    def reset(self, **kwargs: Any):
        self._frames = self._still = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames += 1
        self._still = self._still + 1 if car_speed(self.env) < self.speed else 0
        if self._still >= self.limit and not (terminated or truncated):
            terminated = True
            info = {**info, "standstill": True, "frames_left": max(self.max_frames - self._frames, 0)}
        return obs, reward, terminated, truncated, info


LAP_COMPLETE_PERCENT = 0.95  # CarRacing-v3's default `lap_complete_percent`


def wheel_tiles(env: gym.Env) -> set[int]:
    """Indices of the track tiles a wheel of the car touches now (CarRacing's contact listener keeps each
    wheel's `tiles`), through any wrappers."""
    return {tile.idx for wheel in env.unwrapped.car.wheels for tile in wheel.tiles}


class LapEndTermination(gym.Wrapper):
    """End an episode (``terminated=True``, ``info["lap_end"] = True``, ``info["tiles_missed"]``) when the car is
    back on the start tile with more than `fraction` of the track's tiles visited, but not all: the lap rule
    CarRacing-v3 means to apply (`lap_complete_percent`, 0.95) and Gymnasium 1.2.2 never does, since the car is
    placed on tile 0 and the rule is checked only on a tile's first touch (Gymnasium issue #1269, the fix in
    PR #1670). A lap with every tile visited ends on its own (``info["lap_finished"]``), as in the stock env.

    Training only, on the raw env (frames), beneath the episode statistics, so `info["episode"]` holds the
    unmodified return of the shortened episode. Why: in the stock env a lap with a tile missed drives on to
    frame 1,000, and those frames (about a third of each training episode late in a run, docs/RESULTS.md) teach
    nothing: the reward there is -0.1 a frame whatever the car does, and what it cost (the skipped tile) is
    out of sight by then. Ending the lap gives the samples to new laps; the cost of the skip is what
    `SkippedTilePenalty` charges, at the skip.
    """

    def __init__(self, env: gym.Env, fraction: float = LAP_COMPLETE_PERCENT):
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"lap end fraction={fraction} must be in (0, 1)")
        super().__init__(env)
        self.fraction = float(fraction)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            return obs, reward, terminated, truncated, info
        base = self.env.unwrapped
        total = len(base.track)
        if base.tile_visited_count / total <= self.fraction:  # nearly every frame: no wheel contacts read
            return obs, reward, terminated, truncated, info
        touching = wheel_tiles(self.env)
        # Wholly across the line: a rear wheel still on the last tile may yet touch it.
        if 0 in touching and total - 1 not in touching:
            terminated = True
            info = {**info, "lap_end": True, "tiles_missed": total - base.tile_visited_count}
        return obs, reward, terminated, truncated, info


class RestOfEpisodePenalty(gym.Wrapper):
    """Charge the step that `StandstillTermination` ended with the time penalty of the frames left
    (-0.1 each), so the shaped return equals the stock return of a car that never moves again: the
    undiscounted objective is unchanged, but the learner sees the whole cost of stopping at once instead of
    spread thinly over hundreds of discounted steps. Shaping for training; sits above the episode
    statistics, which keep the unshaped return."""

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("standstill"):
            reward = float(reward) - TIME_PENALTY_PER_FRAME * info["frames_left"]
        return obs, reward, terminated, truncated, info


class SkippedTilePenalty(gym.Wrapper):
    """Add `penalty` (<= 0) once the car has left track tiles unvisited behind it: it cut a corner, or left the
    road and came back further on (``info["skipped_tiles"]`` counts the tiles). Reward shaping for training, on
    the raw env, above the episode statistics (which keep the unshaped return).

    Why: CarRacing-v3 touches tile 0 as the car is placed, so its `lap_complete_percent` rule never fires and an
    episode ends before frame 1,000 only once *every* tile is visited. A car that skips a single tile drives on
    at -0.1 a frame to the time limit: a lap driven in 700 frames with 2 tiles missed scores 893 instead of about
    930, and 37 of a two-hour PPO checkpoint's 100 evaluation episodes ended so, at 850-900 (docs/RESULTS.md).
    That cost arrives hundreds of agent steps after the cut, where the discount and GAE hide it from the action
    that caused it; the penalty charges an estimate of it near the frame of the skip.

    A skip is the gap behind a newly visited tile that lies ahead of the furthest one so far (within half a lap,
    so a car driving the wrong way, or back to a tile it missed, is not charged). It is charged once the car is
    `confirm_tiles` tiles past the gap with the gap still unvisited: in a corner one wheel can touch the next
    tile a few frames before any wheel touches the one in between, and that is not a skip. A charged gap that
    the car visits in full later (where the track passes close to itself, or going back for it) is refunded
    (``info["refunded_skips"]``), so the shaping costs only the skips the stock episode also pays for.
    """

    def __init__(self, env: gym.Env, penalty: float, confirm_tiles: int = 4):
        if penalty > 0:
            raise ValueError(f"skip penalty={penalty} must be <= 0")
        super().__init__(env)
        self.penalty, self.confirm_tiles = float(penalty), int(confirm_tiles)
        self._visited: list[bool] = []
        self._gaps: list[set[int]] = []  # skips not yet charged, each a set of unvisited tile indices
        self._charged: list[set[int]] = []  # skips charged and not yet made good
        self._count = self._furthest = 0

    def _tiles(self) -> list[bool]:
        return [bool(tile.road_visited) for tile in self.env.unwrapped.road]

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._visited = self._tiles()  # CarRacing's reset steps once: the start tiles are already touched
        self._count = self.env.unwrapped.tile_visited_count
        self._gaps, self._charged = [], []
        half = len(self._visited) // 2
        self._furthest = max((i for i in range(half) if self._visited[i]), default=0)
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        count = self.env.unwrapped.tile_visited_count
        skipped = refunded = 0
        if count != self._count:  # new tiles this frame (rare enough to scan them all)
            self._count = count
            skipped, refunded = self._track(self._tiles())
        if info.get("lap_end") and self._gaps:  # the lap is over: a gap too close to the line is a skip too
            skipped += sum(len(gap) for gap in self._gaps)
            self._gaps = []
        if skipped or refunded:
            reward = float(reward) + self.penalty * (bool(skipped) - refunded)
            info = {**info, "skipped_tiles": skipped, "refunded_skips": refunded}
        return obs, reward, terminated, truncated, info

    def _track(self, now: list[bool]) -> tuple[int, int]:
        """Record the gaps behind newly visited tiles ahead of the furthest so far. Returns the number of tiles
        in gaps confirmed now (0 if none) and the number of charged gaps now visited in full."""
        n = len(now)
        for j in [i for i in range(n) if now[i] and not self._visited[i]]:  # ascending
            if 0 < j - self._furthest <= n // 2:
                gap = {i for i in range(self._furthest + 1, j) if not now[i]}
                if gap:
                    self._gaps.append(gap)
                self._furthest = j
        self._visited = now
        skipped, open_gaps = 0, []
        for gap in self._gaps:
            gap = {i for i in gap if not now[i]}
            if gap and self._furthest - max(gap) >= self.confirm_tiles:
                skipped += len(gap)
                self._charged.append(gap)
            elif gap:
                open_gaps.append(gap)
        self._gaps = open_gaps
        still_missing = [gap for gap in self._charged if not all(now[i] for i in gap)]
        refunded = len(self._charged) - len(still_missing)
        self._charged = still_missing
        return skipped, refunded


class NoProgressPenalty(gym.Wrapper):
    """Add `penalty` to the reward of the step that `NoProgressTermination` ended (reward shaping for
    training; sits above the episode statistics, which keep the unshaped return)."""

    def __init__(self, env: gym.Env, penalty: float):
        super().__init__(env)
        self.penalty = float(penalty)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("no_progress"):
            reward = float(reward) + self.penalty
        return obs, reward, terminated, truncated, info
