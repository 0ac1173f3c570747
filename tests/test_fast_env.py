"""distracer/CarRacingFast-v3 against stock CarRacing-v3, array for array, and the shared env wrappers.

Identity means: the same observation arrays (np.array_equal), rewards, terminated, truncated and info
for the same seed and actions, with and without action repeat, through `gym.make` and `make_env`.
"""

from __future__ import annotations

import math
import os
import types

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # human mode calls pygame.init(); no ALSA noise in CI

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402

from distracer.envs import FAST_ID, STOCK_ID, EnvConfig, make_env  # noqa: E402
from distracer.envs import fast_car_racing as fcr  # noqa: E402
from distracer.envs.stepping import EPISODE_ENDS, EnvStep, episode_end, step_envs  # noqa: E402
from distracer.envs.wrappers import (  # noqa: E402
    DISCRETE_ACTIONS,
    ActionRepeat,
    DiscreteActions,
    NoProgressPenalty,
    NoProgressTermination,
    RestOfEpisodePenalty,
    SkippedTilePenalty,
    StandstillTermination,
    SteerAccelActions,
    steer_accel_to_native,
)

# Straight ahead at 40% gas: the car runs off the track and leaves the playfield (y > 333) around frame 285.
# Full gas does not: the rear wheels spin on the grass and the car crawls.
OFF_MAP_NATIVE = np.array([0.0, 0.4, 0.0], dtype=np.float32)
OFF_MAP_STEER_ACCEL = np.array([0.0, 0.4], dtype=np.float32)
OFF_MAP_MAX_FRAMES = 400

Step = tuple[np.ndarray, float, bool, bool, dict]


def native_actions(seed: int, n: int) -> np.ndarray:
    """Random [steer, gas, brake] biased to gas, so the car moves and tiles get visited and recoloured."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform([-1.0, 0.0, 0.0], [1.0, 1.0, 0.3], size=(n, 3))
    return actions.astype(np.float32)


def steer_accel_actions(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-1.0, -0.3], [1.0, 1.0], size=(n, 2)).astype(np.float32)


def comparable_info(info: dict) -> dict:
    """Info without wall-clock time (RecordEpisodeStatistics' episode "t")."""
    info = dict(info)
    if "episode" in info:
        info["episode"] = {k: v for k, v in info["episode"].items() if k != "t"}
    return info


def rollout(env: gym.Env, seed: int, actions) -> list[Step]:
    """Reset with `seed`, then step through `actions` until the episode ends; records every step."""
    obs, info = env.reset(seed=seed)
    steps: list[Step] = [(obs, 0.0, False, False, comparable_info(info))]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append((obs, reward, terminated, truncated, comparable_info(info)))
        if terminated or truncated:
            break
    env.close()
    return steps


def assert_identical(stock: list[Step], fast: list[Step]) -> None:
    assert len(stock) == len(fast)
    for i, (a, b) in enumerate(zip(stock, fast)):
        assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape, f"step {i}: obs type"
        assert np.array_equal(a[0], b[0]), f"step {i}: observations differ"
        assert a[1] == b[1], f"step {i}: reward {a[1]!r} != {b[1]!r}"
        assert (a[2], a[3]) == (b[2], b[3]), f"step {i}: terminated/truncated"
        assert a[4] == b[4], f"step {i}: info {a[4]!r} != {b[4]!r}"


def raw_config(repeat: int, fast: bool) -> EnvConfig:
    """make_env settings that keep the full 96x96 RGB frame, so pixels are compared unprocessed."""
    return EnvConfig(
        fast=fast, action_repeat=repeat, frame_size=96, grayscale=False, frame_stack=1, channel_order="last"
    )


# ---- the numeric building blocks --------------------------------------------------------------------


def test_vectorised_transform_equals_pygame_vector2():
    rng = np.random.default_rng(0)
    angles = list(rng.uniform(-30, 30, size=40)) + [k * math.pi / 2 for k in range(-8, 9)] + [0.0, -0.0]
    for angle in angles:
        pts = rng.uniform(-400, 400, size=(64, 2))
        pts[:4] = 0.0
        zoom, trans = float(rng.uniform(0.5, 17)), (float(rng.uniform(-900, 900)), float(rng.uniform(-900, 900)))
        cos_a, sin_a = fcr.rotation(angle)
        ours = fcr.to_screen(pts, cos_a, sin_a, zoom, trans)
        for p, q in zip(pts.tolist(), ours.tolist()):
            v = pygame.math.Vector2(p).rotate_rad(angle)
            assert q == [v[0] * zoom + trans[0], v[1] * zoom + trans[1]]


# ---- identity: raw ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_raw_envs_identical(seed):
    actions = native_actions(100 + seed, 200)
    assert_identical(rollout(gym.make(STOCK_ID), seed, actions), rollout(gym.make(FAST_ID), seed, actions))


def test_raw_envs_identical_domain_randomized():
    # Random float colours exercise the background-pixel probe and the tile colour conversion.
    actions = native_actions(7, 150)
    stock = rollout(gym.make(STOCK_ID, domain_randomize=True), 7, actions)
    fast = rollout(gym.make(FAST_ID, domain_randomize=True), 7, actions)
    assert_identical(stock, fast)


def test_leaving_playfield_identical():
    actions = [OFF_MAP_NATIVE] * OFF_MAP_MAX_FRAMES
    stock = rollout(gym.make(STOCK_ID), 0, actions)
    fast = rollout(gym.make(FAST_ID), 0, actions)
    _, reward, terminated, truncated, info = stock[-1]
    assert terminated and not truncated and reward == -100 and info == {"lap_finished": False}
    assert_identical(stock, fast)


def test_dashboard_fallback_path_identical(monkeypatch):
    """Frames whose indicators leave the dashboard strip take the stock flip path; force it everywhere."""
    actions = native_actions(3, 80)
    stock = rollout(gym.make(STOCK_ID), 3, actions)
    monkeypatch.setattr(fcr, "fits_strip", lambda polys, text_rect: False)
    assert_identical(stock, rollout(gym.make(FAST_ID), 3, actions))


def test_strip_path_is_the_common_case(monkeypatch):
    calls = {"strip": 0, "stock": 0}
    original = fcr.fits_strip

    def counting(polys, text_rect):
        fits = original(polys, text_rect)
        calls["strip" if fits else "stock"] += 1
        return fits

    monkeypatch.setattr(fcr, "fits_strip", counting)
    rollout(gym.make(FAST_ID), 0, native_actions(0, 50))
    assert calls["strip"] == 51 and calls["stock"] == 0


# ---- identity: make_env with action repeat ----------------------------------------------------------


@pytest.mark.parametrize("repeat", [1, 2, 4])
def test_make_env_identical_with_action_repeat(repeat):
    actions = steer_accel_actions(10 + repeat, 160 // repeat)
    stock = rollout(make_env(raw_config(repeat, fast=False)), 4, actions)
    fast = rollout(make_env(raw_config(repeat, fast=True)), 4, actions)
    assert_identical(stock, fast)


def test_episode_ending_on_an_intermediate_repeat_frame_identical():
    """Leaving the playfield inside a repeat: the fast env must draw that frame with observe()."""
    frames = len(rollout(gym.make(FAST_ID), 0, [OFF_MAP_NATIVE] * OFF_MAP_MAX_FRAMES)) - 1
    repeat = next(k for k in (4, 3, 5, 2) if frames % k != 0)
    actions = [OFF_MAP_STEER_ACCEL] * OFF_MAP_MAX_FRAMES
    stock = rollout(make_env(raw_config(repeat, fast=False)), 0, actions)
    fast = rollout(make_env(raw_config(repeat, fast=True)), 0, actions)
    _, reward, terminated, _, info = stock[-1]
    assert terminated and info["episode"]["l"] == frames and frames % repeat != 0
    assert reward < -90  # -100 on the last frame plus the earlier frames of the repeat
    assert_identical(stock, fast)


def test_truncated_at_1000_frames_identical():
    # Repeat 4 keeps the fast side cheap; stock still draws all 1000 frames.
    actions = steer_accel_actions(5, 1000) * np.array([0.3, 0.2], dtype=np.float32)  # dawdle near the start
    stock = rollout(make_env(raw_config(4, fast=False)), 1, actions)
    fast = rollout(make_env(raw_config(4, fast=True)), 1, actions)
    _, _, terminated, truncated, info = stock[-1]
    assert truncated and not terminated and info["episode"]["l"] == 1000 and len(stock) == 251
    assert_identical(stock, fast)


def test_truncated_on_an_intermediate_repeat_frame_identical():
    # A short time limit makes truncation land inside a repeat (122 = 30 * 4 + 2), cheaply.
    actions = native_actions(8, 40)
    stock = rollout(ActionRepeat(gym.make(STOCK_ID, max_episode_steps=122), 4), 8, actions)
    fast = rollout(ActionRepeat(gym.make(FAST_ID, max_episode_steps=122), 4), 8, actions)
    assert stock[-1][3] and not stock[-1][2] and len(stock) == 32
    assert_identical(stock, fast)


# ---- the skip-drawing contract and other render modes -------------------------------------------


def test_skipped_frames_do_not_change_later_frames():
    actions = native_actions(21, 60)
    stock = rollout(gym.make(STOCK_ID), 2, actions)
    env = gym.make(FAST_ID)
    base = env.unwrapped
    obs, _ = env.reset(seed=2)
    assert base.render_observations is True
    for i, action in enumerate(actions, start=1):
        skip = i % 3 != 0
        base.render_observations = not skip
        previous = base.state
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward == stock[i][1] and (terminated, truncated) == stock[i][2:4] and info == stock[i][4]
        if skip:
            assert obs is previous  # not drawn
            # What the step would have drawn, though its score has moved on by -0.1 since (see observe()).
            assert np.array_equal(base.observe(), stock[i][0]) and base.state is not previous
        else:
            assert np.array_equal(obs, stock[i][0])
            assert np.array_equal(base.observe(), obs)  # drawing again changes nothing
    env.close()


def test_action_repeat_draws_only_returned_frames(monkeypatch):
    env = ActionRepeat(gym.make(FAST_ID), 4)
    base = env.unwrapped
    env.reset(seed=0)
    draws = []
    original = type(base)._render_state_pixels
    monkeypatch.setattr(
        type(base), "_render_state_pixels", lambda self, score: draws.append(1) or original(self, score)
    )
    for action in native_actions(1, 5):
        env.step(action)
    assert len(draws) == 5 and base.render_observations is True
    env.close()


def test_rgb_array_render_identical():
    stock, fast = gym.make(STOCK_ID, render_mode="rgb_array"), gym.make(FAST_ID, render_mode="rgb_array")
    for env in (stock, fast):
        env.reset(seed=5)
    for i, action in enumerate(native_actions(5, 30)):
        a, b = stock.step(action), fast.step(action)
        assert np.array_equal(a[0], b[0]) and a[1:4] == b[1:4]
        if i % 10 == 0:
            frame = stock.render()
            assert frame.shape == (400, 600, 3) and np.array_equal(frame, fast.render())
    stock.close()
    fast.close()


def test_state_pixels_render_identical():
    stock, fast = gym.make(STOCK_ID, render_mode="state_pixels"), gym.make(FAST_ID, render_mode="state_pixels")
    for env in (stock, fast):
        env.reset(seed=1)
    for action in native_actions(9, 25):
        a, b = stock.step(action), fast.step(action)
        # render() draws the score after the step's -0.1, unlike the observation: both must agree anyway.
        assert np.array_equal(a[0], b[0]) and np.array_equal(stock.render(), fast.render())


def test_human_render_mode_runs_and_matches():
    # The dummy SDL driver gives a display; each step ticks the 50 FPS clock, so keep it short.
    actions = native_actions(6, 5)
    stock = rollout(gym.make(STOCK_ID, render_mode="human"), 6, actions)
    fast = rollout(gym.make(FAST_ID, render_mode="human"), 6, actions)
    assert_identical(stock, fast)
    # close() quit pygame; a new env must still draw (nothing cached may dangle).
    assert_identical(stock[:3], rollout(gym.make(FAST_ID), 6, actions[:2]))


# ---- wrappers ---------------------------------------------------------------------------------------


def test_steer_accel_mapping():
    cases = {
        (0.5, 0.7): (0.5, 0.7, 0.0),
        (-0.25, -0.6): (-0.25, 0.0, 0.6),
        (0.0, 0.0): (0.0, 0.0, 0.0),
        (-3.0, 2.0): (-1.0, 1.0, 0.0),  # clipped
        (1.5, -9.0): (1.0, 0.0, 1.0),
    }
    for given, expected in cases.items():
        native = steer_accel_to_native(np.array(given))
        assert native.dtype == np.float32 and native.tolist() == pytest.approx(expected)
    batch = steer_accel_to_native(np.array(list(cases)))
    assert batch.shape == (len(cases), 3) and np.allclose(batch, list(cases.values()))

    env = SteerAccelActions(gym.make(FAST_ID))
    assert env.action_space.shape == (2,) and env.action(np.array([0.2, -0.4])).tolist() == pytest.approx(
        [0.2, 0.0, 0.4]
    )


class ScriptedRewards(gym.Env):
    """A one-number env whose rewards follow a script: what the no-progress rule counts, without physics."""

    observation_space = gym.spaces.Box(0, 1, shape=(1,))
    action_space = gym.spaces.Discrete(1)

    def __init__(self, rewards: list[float]):
        self.rewards = rewards

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        reward = self.rewards[self.t]
        self.t += 1
        return np.zeros(1, np.float32), reward, False, self.t == len(self.rewards), {}


def run_episode(env: gym.Env) -> list[Step]:
    env.reset()
    steps = []
    while not steps or not (steps[-1][2] or steps[-1][3]):
        steps.append(env.step(0))
    return steps


def test_no_progress_counts_frames_since_the_last_positive_reward():
    # 3 frames without progress, a tile, then 4 without: ends on the 4th (limit 4), not after 4 in all.
    steps = run_episode(NoProgressTermination(ScriptedRewards([-0.1] * 3 + [3.2] + [-0.1] * 10), limit=4))
    assert len(steps) == 8 and steps[-1][2] and steps[-1][4] == {"no_progress": True}
    assert not any(s[2] or "no_progress" in s[4] for s in steps[:-1])
    # An episode the time limit ends first is truncated, not marked.
    steps = run_episode(NoProgressTermination(ScriptedRewards([-0.1] * 3), limit=4))
    assert len(steps) == 3 and steps[-1][3] and not steps[-1][2] and "no_progress" not in steps[-1][4]
    with pytest.raises(ValueError, match="limit=0"):
        NoProgressTermination(ScriptedRewards([0.0]), limit=0)


def test_no_progress_penalty_is_shaping_only():
    """The learner's reward gets the penalty; the episode statistics beneath keep the unshaped return."""
    from gymnasium.wrappers import RecordEpisodeStatistics

    env = NoProgressPenalty(RecordEpisodeStatistics(NoProgressTermination(ScriptedRewards([1.0] + [-0.1] * 9), 2)),
                            penalty=-100.0)
    steps = run_episode(env)
    assert [s[1] for s in steps] == pytest.approx([1.0, -0.1, -100.1])
    assert steps[-1][4]["episode"]["r"] == pytest.approx(0.8) and steps[-1][4]["episode"]["l"] == 3


def first_end(env: gym.Env, action: np.ndarray, limit: int = 100) -> Step:
    """Reset `env`, repeat `action` and return the step that ends the episode (or the `limit`-th step)."""
    env.reset()
    for _ in range(limit):
        step = env.step(action)
        if step[2] or step[3]:
            break
    return step


def test_make_env_ends_only_training_episodes_of_a_stopped_car():
    """A car that never moves: a training env ends it after `no_progress_frames` frames; the stock env an
    evaluation builds from the same config runs the whole episode."""
    config = EnvConfig(action_repeat=2, frame_size=64, no_progress_frames=30, no_progress_penalty=-100.0)
    stop = np.zeros(2, dtype=np.float32)
    _, reward, terminated, _, info = first_end(make_env(config, seed=5, training=True), stop)
    assert terminated and info["no_progress"] and info["episode"]["l"] <= 40  # raw frames
    assert -100.2 - 1e-6 <= reward <= -100.1 + 1e-6 and info["episode"]["r"] > -100.0  # ends on either frame
    evaluation = make_env(config, seed=5, stock=True)
    evaluation.reset()
    assert not any(evaluation.step(stop)[2] for _ in range(50))  # 100 frames, still going


class ScriptedSpeeds(ScriptedRewards):
    """ScriptedRewards with a car whose hull speed follows a second script: what the standstill rule reads."""

    def __init__(self, rewards: list[float], speeds: list[float]):
        super().__init__(rewards)
        self.speeds = speeds
        self.car = types.SimpleNamespace(hull=types.SimpleNamespace(linearVelocity=(0.0, 0.0)))

    def step(self, action):
        self.car.hull.linearVelocity = (0.6 * self.speeds[self.t], 0.8 * self.speeds[self.t])  # |v| = speed
        return super().step(action)


def test_standstill_counts_consecutive_slow_frames_and_reports_frames_left():
    # Slow for 2 frames, moving, then slow from frame 4: ends on frame 6 (limit 3) with 10 - 6 frames left.
    speeds = [0.5, 0.0, 20.0, 0.9, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    steps = run_episode(StandstillTermination(ScriptedSpeeds([-0.1] * 10, speeds), limit=3, max_frames=10))
    assert len(steps) == 6 and steps[-1][2] and steps[-1][4] == {"standstill": True, "frames_left": 4}
    assert not any(s[2] or "standstill" in s[4] for s in steps[:-1])
    # A car that keeps moving, however slowly past the threshold, runs to the time limit, truncated.
    steps = run_episode(StandstillTermination(ScriptedSpeeds([-0.1] * 10, [1.0] * 10), limit=3, max_frames=10))
    assert len(steps) == 10 and steps[-1][3] and not steps[-1][2]
    with pytest.raises(ValueError, match="limit=0"):
        StandstillTermination(ScriptedSpeeds([0.0], [0.0]), limit=0)


def test_rest_of_episode_penalty_makes_the_shaped_return_the_stock_return_of_staying():
    """The learner's reward is charged -0.1 per frame left; the episode statistics keep the unshaped return."""
    from gymnasium.wrappers import RecordEpisodeStatistics

    rewards = [3.0] + [-0.1] * 9
    env = RestOfEpisodePenalty(RecordEpisodeStatistics(
        StandstillTermination(ScriptedSpeeds(rewards, [5.0] + [0.0] * 9), limit=2, max_frames=10)))
    steps = run_episode(env)
    assert [s[1] for s in steps] == pytest.approx([3.0, -0.1, -0.1 - 0.7])
    assert steps[-1][4]["episode"]["r"] == pytest.approx(2.8) and steps[-1][4]["episode"]["l"] == 3
    assert sum(s[1] for s in steps) == pytest.approx(sum(rewards))  # what a car that never moved again gets


def test_make_env_ends_only_training_episodes_of_a_car_braked_to_a_halt():
    """Full brake from the start: a training env ends the episode after `standstill_frames` frames and
    charges the 900 frames left; the stock env an evaluation builds from the same config keeps going."""
    config = EnvConfig(action_repeat=2, frame_size=64, standstill_frames=100)
    brake = np.array([0.0, -1.0], dtype=np.float32)
    _, reward, terminated, _, info = first_end(make_env(config, seed=5, training=True), brake)
    assert terminated and info["standstill"] and info["frames_left"] == 900 and info["episode"]["l"] == 100
    assert reward == pytest.approx(-0.2 - 90.0)  # two frames' time penalty + 900 frames' charge
    evaluation = make_env(config, seed=5, stock=True)
    evaluation.reset()
    assert not any(evaluation.step(brake)[2] for _ in range(75))  # 150 frames, still going


class ScriptedTiles(ScriptedRewards):
    """A track of `n` tiles whose visits follow a script (the tiles first touched on each frame); tiles 0 and 1
    are touched on reset, as CarRacing's placing of the car does."""

    def __init__(self, n: int, visits: list[list[int]]):
        super().__init__([-0.1] * len(visits))
        self.visits = visits
        self.road = [types.SimpleNamespace(road_visited=False) for _ in range(n)]

    def reset(self, *, seed=None, options=None):
        for tile in self.road:
            tile.road_visited = False
        self.road[0].road_visited = self.road[1].road_visited = True
        self.tile_visited_count = 2
        return super().reset(seed=seed, options=options)

    def step(self, action):
        for i in self.visits[self.t]:
            self.road[i].road_visited = True
        self.tile_visited_count = sum(t.road_visited for t in self.road)
        return super().step(action)


def skip_rewards(visits: list[list[int]], n: int = 40) -> list[float]:
    """The shaped reward of each frame, with the skip penalty -20 (the time penalty -0.1 beneath)."""
    return [s[1] for s in run_episode(SkippedTilePenalty(ScriptedTiles(n, visits), penalty=-20.0))]


def test_skip_penalty_charges_a_gap_left_behind_once_confirmed():
    # Tiles 4-6 jumped on frame 3; charged once the car is 4 tiles past them (tile 10), once for the whole gap.
    rewards = skip_rewards([[2], [3], [7], [8], [9], [10], [11]])
    assert rewards == pytest.approx([-0.1] * 5 + [-20.1, -0.1])
    env = SkippedTilePenalty(ScriptedTiles(40, [[2], [3], [7], [8], [9], [10], [11]]), penalty=-20.0)
    assert run_episode(env)[5][4]["skipped_tiles"] == 3


def test_skip_penalty_ignores_a_wheel_ahead_in_a_corner_the_wrong_way_and_an_in_order_lap():
    assert skip_rewards([[3], [2], [4], [5], [6], [7], [8], [9]]) == pytest.approx([-0.1] * 8)  # 3 before 2
    assert skip_rewards([[39], [38], [37], [36], [35], [34]]) == pytest.approx([-0.1] * 6)  # backwards from 0
    assert skip_rewards([[i] for i in range(2, 40)]) == pytest.approx([-0.1] * 38)


def test_skip_penalty_refunds_a_gap_visited_later():
    # Gap 4-6 charged at tile 10, then visited (the track passing close to itself, or the car going back).
    rewards = skip_rewards([[2], [3], [7], [8], [9], [10], [4, 5], [6], [11]])
    assert rewards == pytest.approx([-0.1] * 5 + [-20.1, -0.1, 19.9, -0.1])
    with pytest.raises(ValueError, match="penalty=5.0"):
        SkippedTilePenalty(ScriptedTiles(40, [[2]]), penalty=5.0)


def test_make_env_adds_the_skip_penalty_to_training_envs_only():
    config = EnvConfig(action_repeat=2, frame_size=64, skip_penalty=-20.0)
    wrappers = []
    env = make_env(config, seed=5, training=True)
    while isinstance(env, gym.Wrapper):
        wrappers.append(type(env))
        env = env.env
    assert SkippedTilePenalty in wrappers
    env = make_env(config, seed=5, stock=True)
    while isinstance(env, gym.Wrapper):
        assert not isinstance(env, SkippedTilePenalty)
        env = env.env


def test_a_resume_may_change_training_only_rules_but_not_what_the_policy_sees():
    base = EnvConfig(action_repeat=2, frame_size=64, frame_stack=2, standstill_frames=100)
    shaped = EnvConfig(action_repeat=2, frame_size=64, frame_stack=2, skip_penalty=-20.0, fast=False)
    assert base.acting_fields() == shaped.acting_fields()
    assert base.acting_fields() != EnvConfig(action_repeat=2, frame_size=84, frame_stack=2).acting_fields()
    assert base.acting_fields() != EnvConfig(action_repeat=4, frame_size=64, frame_stack=2).acting_fields()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"no_progress_frames": -1}, "no_progress_frames=-1"),
        ({"no_progress_frames": 50, "no_progress_penalty": 5.0}, "no_progress_penalty=5.0 must be <= 0"),
        ({"no_progress_penalty": -10.0}, "never applies"),
        ({"standstill_frames": -5}, "standstill_frames=-5"),
        ({"skip_penalty": 20.0}, "skip_penalty=20.0 must be <= 0"),
    ],
)
def test_no_progress_settings_are_checked(settings, message):
    from distracer.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        EnvConfig(**settings).validate()


def test_discrete_mapping():
    env = DiscreteActions(gym.make(FAST_ID))
    assert env.action_space.n == 5
    expected = [[-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0.8], [0, 0, 0]]
    for i, native in enumerate(expected):
        assert env.action(i).tolist() == pytest.approx(native)
        assert env.action(np.int64(i)).tolist() == DISCRETE_ACTIONS[i].tolist()
    env.action(0)[0] = 99.0  # a copy: the table must not change
    assert DISCRETE_ACTIONS[0, 0] == -1.0
    for bad in (-1, 5):
        with pytest.raises(ValueError):
            env.action(bad)


@pytest.mark.parametrize(
    ("grayscale", "order", "shape"),
    [
        (True, "first", (4, 84, 84)),
        (True, "last", (84, 84, 4)),
        (False, "first", (12, 84, 84)),
        (False, "last", (84, 84, 12)),
    ],
)
def test_frame_stack_shapes(grayscale, order, shape):
    env = make_env(EnvConfig(grayscale=grayscale, channel_order=order), seed=0)
    assert env.observation_space.shape == shape
    obs, _ = env.reset()
    assert obs.shape == shape and obs.dtype == np.uint8 and obs.flags["C_CONTIGUOUS"]
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == shape
    env.close()


def test_channel_last_is_channel_first_moved():
    first = make_env(EnvConfig(grayscale=False, channel_order="first"), seed=3)
    last = make_env(EnvConfig(grayscale=False, channel_order="last"), seed=3)
    a, _ = first.reset()
    b, _ = last.reset()
    for action in steer_accel_actions(3, 3):
        a, *_ = first.step(action)
        b, *_ = last.step(action)
    assert np.array_equal(np.moveaxis(a, 0, -1), b)


def test_same_seed_same_observations():
    def trace(seed: int, discrete: bool) -> list[np.ndarray]:
        env = make_env(EnvConfig(action_space="discrete" if discrete else "continuous"), seed=seed)
        obs, _ = env.reset()
        frames = [obs]
        for _ in range(8):
            obs, *_ = env.step(env.action_space.sample())  # seeded by make_env
            frames.append(obs)
        env.close()
        return frames

    for discrete in (False, True):
        a, b = trace(11, discrete), trace(11, discrete)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(trace(11, False)[0], trace(12, False)[0])  # another track


@pytest.mark.parametrize("repeat", [1, 4])
def test_episode_return_is_the_sum_of_raw_rewards(repeat):
    env = make_env(EnvConfig(action_repeat=repeat), seed=0)
    raw = []
    base_step = env.unwrapped.step

    def recording_step(action):
        result = base_step(action)
        raw.append(result[1])
        return result

    env.unwrapped.step = recording_step
    env.reset()
    raw.clear()  # reset() steps once without an action; that is not part of the episode
    returned = []
    for _ in range(OFF_MAP_MAX_FRAMES):
        _, reward, terminated, truncated, info = env.step(OFF_MAP_STEER_ACCEL)
        returned.append(reward)
        if terminated or truncated:
            break
    assert terminated and raw[-1] == -100
    assert info["episode"]["r"] == sum(raw) and info["episode"]["l"] == len(raw)
    assert info["episode"]["r"] == pytest.approx(sum(returned), abs=1e-9)
    env.close()


# ---- long sweep -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 9))
@pytest.mark.parametrize("repeat", [1, 3])
def test_full_episodes_identical(seed, repeat):
    """Whole 1000-frame episodes (or until the car leaves) on more tracks, continuous and discrete."""
    actions = steer_accel_actions(1000 + seed, 1000 // repeat + 1)
    stock = rollout(make_env(raw_config(repeat, fast=False)), seed, actions)
    fast = rollout(make_env(raw_config(repeat, fast=True)), seed, actions)
    assert stock[-1][2] or stock[-1][3]
    assert_identical(stock, fast)

    discrete = np.random.default_rng(seed).integers(0, 5, size=1000 // repeat + 1)
    config = {"action_space": "discrete"}
    stock = rollout(make_env(EnvConfig(fast=False, action_repeat=repeat, **config)), seed, discrete)
    fast = rollout(make_env(EnvConfig(fast=True, action_repeat=repeat, **config)), seed, discrete)
    assert_identical(stock, fast)


def _end_of_first_episode(env: gym.Env, action: np.ndarray, limit: int) -> EnvStep:
    """Step one env with `action` through `step_envs` until its episode ends; that step."""
    env.reset(seed=0)
    for _ in range(limit):
        (step,) = step_envs([env], np.asarray([action]))
        if step.reset:
            return step
    raise AssertionError(f"no episode end within {limit} steps")


def test_step_envs_names_why_each_real_episode_ended():
    """train/ended_*: the standstill rule, leaving the playfield and the time limit, each on the real env
    (through make_env's wrappers and action repeat); a finished lap from CarRacing's own info flag."""
    halt = make_env(EnvConfig(action_repeat=2, frame_size=64, standstill_frames=100), training=True)
    step = _end_of_first_episode(halt, np.array([0.0, -1.0], np.float32), 100)
    assert step.end == "standstill" and step.episode[1] == 100
    off = make_env(EnvConfig(action_repeat=4, frame_size=64))
    step = _end_of_first_episode(off, OFF_MAP_STEER_ACCEL, OFF_MAP_MAX_FRAMES)
    assert step.end == "off_playfield" and step.terminated
    slow = make_env(raw_config(4, fast=True))
    step = _end_of_first_episode(slow, np.array([0.3, 0.2], np.float32), 251)
    assert step.end == "time_limit" and step.episode[1] == 1000
    assert episode_end(True, False, {"lap_finished": True}) == "lap"
    assert episode_end(True, False, {"no_progress": True}) == "no_progress"
    assert episode_end(True, False, {}) == "other"
    assert set(EPISODE_ENDS) >= {"standstill", "off_playfield", "time_limit", "lap", "no_progress", "other"}
