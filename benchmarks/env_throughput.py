"""Env frames/s of stock CarRacing-v3, distracer's fast CarRacing (action repeat 1, 2, 4) and EnvPool.

Runs on one pinned core. Every configuration plays random actions (fixed seed), resetting at episode
end, and counts every env frame (physics step), also the undrawn ones inside an action repeat. The
configurations run interleaved in rounds, so load from other processes on the machine spreads over all
of them instead of biasing whichever ran during a busy moment.

    python benchmarks/env_throughput.py [--frames 3000] [--rounds 3] [--core N]

Figures are frames per wall-clock second and, because the machine may be shared, also frames per CPU
second of this process. The last line printed is a JSON object with the figures and their ratios to stock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# Before pygame is imported (by gymnasium's CarRacing): no display on servers.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from distracer.envs import FAST_ID, STOCK_ID  # noqa: E402
from distracer.envs.wrappers import ActionRepeat  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _common import cpu_model  # noqa: E402

LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)


class CountFrames(gym.Wrapper):
    """Counts raw env steps; sits under ActionRepeat so repeated frames are counted one by one."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.frames = 0

    def step(self, action):
        self.frames += 1
        return self.env.step(action)


@dataclass
class Runner:
    """One configuration: advances its env by about `frames` env frames per call, timing only that."""

    name: str
    advance: Callable[[int], int]
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    frames: int = 0

    def run(self, frames: int) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        done = self.advance(frames)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - start_cpu
        self.frames += done

    @property
    def fps(self) -> float:
        """Frames per wall-clock second: what a worker gets, including time other processes took."""
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cpu_fps(self) -> float:
        """Frames per CPU second of this process: less sensitive to other load on a shared machine."""
        return self.frames / self.cpu_seconds if self.cpu_seconds else 0.0


def gym_runner(name: str, env_id: str, repeat: int, seed: int) -> Runner:
    counter = CountFrames(gym.make(env_id))
    env: gym.Env = ActionRepeat(counter, repeat) if repeat > 1 else counter
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)

    def advance(frames: int) -> int:
        start = counter.frames
        while counter.frames - start < frames:
            _, _, terminated, truncated, _ = env.step(rng.uniform(LOW, HIGH).astype(np.float32))
            if terminated or truncated:
                env.reset()
        return counter.frames - start

    return Runner(name, advance)


def envpool_runner(seed: int) -> Runner | None:
    """EnvPool's C++ CarRacing-v3 (one env, one thread), or None if it is not installed or fails."""
    try:
        import envpool

        env = envpool.make_gymnasium("CarRacing-v3", num_envs=1, batch_size=1, num_threads=1, seed=seed)
        env.reset()
    except Exception as exc:  # optional comparison: any import or build problem just skips it
        print(f"envpool: skipped ({type(exc).__name__}: {exc})")
        return None
    rng = np.random.default_rng(seed)

    def advance(frames: int) -> int:
        # EnvPool resets by itself on the step after an episode ends.
        for _ in range(frames):
            env.step(rng.uniform(LOW, HIGH, size=(1, 3)).astype(np.float32))
        return frames

    return Runner("envpool", advance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="env frames per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the frames are split into")
    parser.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)), help="CPU core to pin to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-envpool", action="store_true", help="skip EnvPool even if installed")
    args = parser.parse_args()

    # Pin first: threads started later (EnvPool's) inherit the affinity.
    os.sched_setaffinity(0, {args.core})
    load_start = os.getloadavg()
    print(f"core {args.core} of {os.cpu_count()} ({cpu_model()}), load average {load_start[0]:.2f}")

    runners = [
        gym_runner("stock", STOCK_ID, 1, args.seed),
        gym_runner("fast", FAST_ID, 1, args.seed),
        gym_runner("fast_repeat2", FAST_ID, 2, args.seed),
        gym_runner("fast_repeat4", FAST_ID, 4, args.seed),
    ]
    pool = None if args.no_envpool else envpool_runner(args.seed)
    if pool is not None:
        runners.append(pool)

    # Warm-up (imports, caches, first track) stays out of the figures.
    for runner in runners:
        runner.advance(50)
    per_round = max(1, args.frames // args.rounds)
    for _ in range(args.rounds):
        for runner in runners:
            runner.run(per_round)

    stock = runners[0]
    result: dict = {"frames_per_config": per_round * args.rounds, "core": args.core}
    for runner in runners:
        ratio, cpu_ratio = runner.fps / stock.fps, runner.cpu_fps / stock.cpu_fps
        print(
            f"{runner.name:>13}: {runner.fps:8.1f} env frames/s ({ratio:5.2f}x stock)   "
            f"{runner.cpu_fps:8.1f} env frames/CPU-s ({cpu_ratio:5.2f}x stock)"
        )
        result[f"{runner.name}_fps"] = round(runner.fps, 1)
        result[f"{runner.name}_ratio"] = round(ratio, 2)
        result[f"{runner.name}_cpu_fps"] = round(runner.cpu_fps, 1)
        result[f"{runner.name}_cpu_ratio"] = round(cpu_ratio, 2)
    if pool is None:
        result["envpool_fps"] = None
    load_end = os.getloadavg()
    result["load_avg_start"] = round(load_start[0], 2)
    result["load_avg_end"] = round(load_end[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
