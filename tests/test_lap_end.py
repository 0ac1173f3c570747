"""The training-only lap rule (`env.lap_end_fraction`, LapEndTermination) on the real CarRacing, driven round a
whole lap by a centre-line follower, and how the skip penalty and the episode-end reasons read it."""

from __future__ import annotations

import os
import types

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from distracer.envs import FAST_ID, EnvConfig, make_env  # noqa: E402
from distracer.envs.stepping import episode_end  # noqa: E402
from distracer.envs.wrappers import LapEndTermination, SkippedTilePenalty  # noqa: E402
from distracer.errors import ConfigError  # noqa: E402


def follow_centre_line(env: gym.Env, seed: int, unvisit_at: int | None = None, tile: int = 50):
    """Drive the raw env round its track (steer at the centre-line point 6 ahead, hold ~60 m/s) until the episode
    ends; at frame `unvisit_at` mark `tile` (already driven over) unvisited again, as if the car had cut it.
    Returns (frames, terminated, truncated, info)."""
    env.reset(seed=seed)
    base = env.unwrapped
    track = np.array([(x, y) for _, _, x, y in base.track])
    for frame in range(1, 1001):
        hull = base.car.hull
        pos = np.array(hull.position)
        nearest = int(np.argmin(((track - pos) ** 2).sum(1)))
        to = track[(nearest + 6) % len(track)] - pos
        heading = (np.arctan2(to[1], to[0]) - hull.angle - np.pi / 2 + np.pi) % (2 * np.pi) - np.pi
        gas = 0.5 if np.hypot(*hull.linearVelocity) < 60 else 0.0
        _, _, terminated, truncated, info = env.step(np.array([np.clip(-2 * heading, -1, 1), gas, 0.0], np.float32))
        if frame == unvisit_at:
            assert base.road[tile].road_visited
            base.road[tile].road_visited = False
            base.tile_visited_count -= 1
        if terminated or truncated:
            return frame, terminated, truncated, info
    raise AssertionError("the episode did not end at the time limit")


def test_a_lap_with_a_tile_missed_ends_at_the_start_line():
    frames, terminated, truncated, info = follow_centre_line(LapEndTermination(gym.make(FAST_ID)), 3, unvisit_at=400)
    assert terminated and not truncated and frames < 1000
    assert info == {"lap_end": True, "tiles_missed": 1}
    # The stock env drives on into a second lap, here until the car passes the missed tile again.
    stock_frames, stock_terminated, _, stock_info = follow_centre_line(gym.make(FAST_ID), 3, unvisit_at=400)
    assert stock_frames > frames + 100 and stock_terminated and stock_info == {"lap_finished": True}


def test_a_lap_with_every_tile_ends_as_the_stock_env_ends_it():
    env = LapEndTermination(gym.make(FAST_ID))
    frames, terminated, _, info = follow_centre_line(env, 3)
    assert terminated and info.get("lap_finished") is True and "lap_end" not in info
    assert follow_centre_line(gym.make(FAST_ID), 3)[0] == frames  # the stock env ends it on the same frame


def test_the_start_tile_under_the_car_at_reset_ends_nothing():
    env = LapEndTermination(gym.make(FAST_ID))
    env.reset(seed=3)
    assert 0 in {t.idx for w in env.unwrapped.car.wheels for t in w.tiles}  # placed on tile 0
    assert not any(env.step(np.zeros(3, np.float32))[2] for _ in range(50))  # standing on it


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_lap_end_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match=f"fraction={fraction}"):
        LapEndTermination(gym.make(FAST_ID), fraction)
    if fraction:
        with pytest.raises(ConfigError, match=f"env.lap_end_fraction={fraction} must be in"):
            EnvConfig(lap_end_fraction=fraction).validate()


def test_make_env_adds_the_lap_rule_to_training_envs_only():
    config = EnvConfig(action_repeat=2, frame_size=64, lap_end_fraction=0.95)

    def wrappers(env):
        out = []
        while isinstance(env, gym.Wrapper):
            out.append(type(env))
            env = env.env
        return out

    assert LapEndTermination in wrappers(make_env(config, seed=5, training=True))
    assert LapEndTermination not in wrappers(make_env(config, seed=5, stock=True))
    assert config.acting_fields() == EnvConfig(action_repeat=2, frame_size=64).acting_fields()  # training only


def test_a_lap_ended_with_tiles_missed_is_its_own_episode_end():
    assert episode_end(True, False, {"lap_end": True, "tiles_missed": 3}) == "lap_tiles_missed"
    assert episode_end(True, False, {"lap_finished": True}) == "lap"


class ScriptedLap(gym.Env):
    """Tiles first touched on each frame follow a script (tiles 0 and 1 at reset); the last frame reports the
    lap rule's end, as LapEndTermination does."""

    observation_space = gym.spaces.Box(0, 1, shape=(1,))
    action_space = gym.spaces.Discrete(1)

    def __init__(self, n: int, visits: list[list[int]]):
        self.visits = visits
        self.road = [types.SimpleNamespace(road_visited=False) for _ in range(n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        for tile in self.road:
            tile.road_visited = False
        self.road[0].road_visited = self.road[1].road_visited = True
        self.tile_visited_count, self.t = 2, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        for i in self.visits[self.t]:
            self.road[i].road_visited = True
        self.tile_visited_count = sum(t.road_visited for t in self.road)
        self.t += 1
        end = self.t == len(self.visits)
        info = {"lap_end": True, "tiles_missed": len(self.road) - self.tile_visited_count} if end else {}
        return np.zeros(1, np.float32), -0.1, end, False, info


def test_the_skip_penalty_charges_a_gap_too_close_to_the_line_to_confirm():
    # 12 tiles; 9 is jumped on the way to 10 and 11, then the lap ends: fewer than confirm_tiles (4) past it,
    # yet a skip (the lap is over), charged once on the lap's last frame.
    env = SkippedTilePenalty(ScriptedLap(12, [[i] for i in range(2, 9)] + [[10], [11], []]), penalty=-20.0)
    env.reset()
    rewards, info = [], {}
    while not info.get("lap_end"):
        _, reward, _, _, info = env.step(0)
        rewards.append(reward)
    assert rewards == pytest.approx([-0.1] * 9 + [-20.1]) and info["skipped_tiles"] == 1
