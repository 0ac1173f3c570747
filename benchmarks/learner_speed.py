"""Learner speed: gradient updates/s of each distracer learner against its Stable-Baselines3 counterpart.

Both sides take the same random 84x84x4 uint8 observations at the same batch size, on the same device,
with the same torch threads:

- ours: `learner.update(batch)` on pre-built off-policy batches (SAC+DrQ, DQN), or `PPOLearner.update`
  on a rollout, counting its minibatch gradient steps;
- SB3 (SAC, DQN, PPO with "CnnPolicy", built on a dummy env with the same spaces): its replay buffer
  (or rollout buffer) is filled with the same data and `model.train(...)` does the same number of
  gradient steps at the same batch size. SB3's `train` samples its replay buffer every step; that
  cost is measured apart (`sb3_sample_ms`) and a second ratio leaves it out of SB3's time.

The two sides alternate in rounds, so a change in the load that other processes put on the machine
hits both alike. Wall-clock figures are total gradient steps over total time. On CPU the judged figure
is updates per CPU-second of this process in each side's best round: with one torch thread that is
what a core of one's own would give, and it moves far less than wall time when others share the cores.

    python benchmarks/learner_speed.py [--threads 1] [--rounds 5] [--device cpu|cuda|all] [--cases a,b]

Targets: every learner at least as fast per update as SB3 (ratio >= 1), SAC+DrQ at least 2x (SB3's SAC
gives actor and critic their own CNNs and back-propagates the actor loss through the critic's; DrQ's
encoder is shared and trained by the critic alone). The last line is JSON.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from _common import machine_info, print_json_last

OBS_SHAPE = (4, 84, 84)
N_DISCRETE = 5
POOL = 1024  # distinct transitions both sides draw from
PPO_ROLLOUT = 256  # transitions per PPO rollout
PPO_EPOCHS = 4  # passes over it per update call: 16 minibatch steps of 64, so per-call work (GAE, the
# NaN-safety snapshot, reward normalisation) is spread over several steps, as with real rollouts (2,560 steps)


@dataclass(frozen=True)
class Case:
    name: str
    algo: str  # sac_drq | dqn | ppo
    batch_size: int
    target: float  # ours / SB3 must be at least this
    cpu_steps: int  # gradient steps per round and side on CPU (slow cases take few)
    cuda_steps: int
    double_q: bool = True  # DQN only: False is SB3's own (single-network) target


CASES = (
    Case("sac_drq_b256", "sac_drq", 256, 2.0, cpu_steps=2, cuda_steps=50),
    Case("dqn_b256", "dqn", 256, 1.0, cpu_steps=2, cuda_steps=100),
    Case("dqn_b32", "dqn", 32, 1.0, cpu_steps=10, cuda_steps=200),
    # Double DQN (distracer's default) runs the CNN once more than SB3's DQN, on next_obs to pick the action;
    # these two cases run SB3's exact algorithm, so the figures compare implementations.
    Case("dqn_b256_single", "dqn", 256, 1.0, cpu_steps=2, cuda_steps=100, double_q=False),
    Case("dqn_b32_single", "dqn", 32, 1.0, cpu_steps=10, cuda_steps=200, double_q=False),
    Case("ppo_mb64", "ppo", 64, 1.0, cpu_steps=16, cuda_steps=256),  # PPO: minibatch steps of whole rollouts
)


# ----- shared data ----------------------------------------------------------------------------------------
def obs_pool(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """POOL random (obs, next_obs) uint8 stacks; noise costs the CNN exactly what real frames cost."""
    obs = rng.integers(0, 256, size=(POOL, *OBS_SHAPE), dtype=np.uint8)
    return obs, rng.integers(0, 256, size=(POOL, *OBS_SHAPE), dtype=np.uint8)


def actions_for(algo: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if algo == "dqn":
        return rng.integers(0, N_DISCRETE, size=n).astype(np.int64)
    return rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)


class DummyEnv(gym.Env):
    """Only the spaces matter: SB3 builds its policy and buffers from them; nothing is stepped."""

    def __init__(self, discrete: bool):
        self.observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)
        self.action_space = (gym.spaces.Discrete(N_DISCRETE) if discrete
                             else gym.spaces.Box(-1.0, 1.0, (2,), np.float32))

    def reset(self, *, seed=None, options=None):
        return np.zeros(OBS_SHAPE, np.uint8), {}

    def step(self, action):
        return np.zeros(OBS_SHAPE, np.uint8), 0.0, False, False, {}


def quiet_logger():
    """A logger with no outputs, so SB3's train() can record without writing anywhere."""
    from stable_baselines3.common.logger import Logger

    return Logger(folder=None, output_formats=[])


# ----- the two sides of each case ---------------------------------------------------------------------------
Runner = Callable[[int], int]
"""Does about `steps` gradient steps, returns how many it did."""


@dataclass
class Sides:
    ours: Runner
    sb3: Runner
    sb3_sample: Runner | None  # SB3's per-step replay sampling alone (off-policy only)


def off_policy_sides(case: Case, device: str, pool: tuple[np.ndarray, np.ndarray],
                     rng: np.random.Generator, precision: str = "fp32") -> Sides:
    from stable_baselines3 import DQN, SAC

    from distracer.algos.base import ActionSpec, DeviceConfig

    obs, next_obs = pool
    actions = actions_for(case.algo, POOL, rng)
    rewards = rng.normal(size=POOL).astype(np.float32)
    terminated = rng.random(POOL) < 0.01
    b = case.batch_size

    # Ours: a few pre-built batches from the pool, in the replay's batch format.
    batches = []
    for _ in range(4):
        idx = rng.choice(POOL, size=b, replace=False)
        batches.append({"obs": obs[idx], "action": actions[idx], "reward": rewards[idx],
                        "next_obs": next_obs[idx], "discount": (0.99 * ~terminated[idx]).astype(np.float32)})
    dev = DeviceConfig(device=device, precision=precision)
    if case.algo == "sac_drq":
        from distracer.algos.sac_drq import SACConfig, SACDrQLearner

        learner = SACDrQLearner(SACConfig(batch_size=b), OBS_SHAPE, ActionSpec("continuous", 2), dev, seed=0)
        model = SAC("CnnPolicy", DummyEnv(False), buffer_size=POOL, learning_starts=0, batch_size=b,
                    device=device, seed=0)
    else:
        from distracer.algos.dqn import DQNConfig, DQNLearner

        config = DQNConfig(batch_size=b, double_q=case.double_q)
        learner = DQNLearner(config, OBS_SHAPE, ActionSpec("discrete", N_DISCRETE), dev, seed=0)
        model = DQN("CnnPolicy", DummyEnv(True), buffer_size=POOL, learning_starts=0, batch_size=b,
                    device=device, seed=0)
    model.set_logger(quiet_logger())

    # SB3's replay buffer (one env) holds exactly the same transitions.
    buf = model.replay_buffer
    buf.observations[:, 0] = obs
    buf.next_observations[:, 0] = next_obs
    buf.actions[:, 0] = actions.reshape(POOL, -1)
    buf.rewards[:, 0] = rewards
    buf.dones[:, 0] = terminated
    buf.pos, buf.full = 0, True

    def ours(steps: int) -> int:
        for i in range(steps):
            learner.update(batches[i % len(batches)])
        return steps

    def sb3(steps: int) -> int:
        model.train(gradient_steps=steps, batch_size=b)
        return steps

    def sb3_sample(steps: int) -> int:
        for _ in range(steps):
            buf.sample(b)
        return steps

    return Sides(ours, sb3, sb3_sample)


def ppo_sides(case: Case, device: str, pool: tuple[np.ndarray, np.ndarray], rng: np.random.Generator,
              rollout_size: int, precision: str = "fp32") -> Sides:
    """One rollout of `rollout_size` transitions, PPO_EPOCHS epochs of minibatches per update call on both sides."""
    from stable_baselines3 import PPO

    from distracer.algos.base import ActionSpec, DeviceConfig
    from distracer.algos.ppo import PPOConfig, PPOLearner, Rollout

    n = rollout_size
    obs = pool[0][:n]
    actions = rng.normal(size=(n, 2)).astype(np.float32)
    logprob = rng.normal(-2.8, 0.1, size=n).astype(np.float32)  # about a 2-D unit Gaussian's log-density
    values = rng.normal(size=n).astype(np.float32)
    rewards = rng.normal(size=n).astype(np.float32)
    advantages = rng.normal(size=n).astype(np.float32)

    cfg = PPOConfig(num_envs=1, num_steps=n, n_epochs=PPO_EPOCHS, minibatch_size=case.batch_size,
                    lr_schedule="constant")  # a schedule needs a run length; speed does not depend on it
    learner = PPOLearner(cfg, OBS_SHAPE, ActionSpec("continuous", 2),
                         DeviceConfig(device=device, precision=precision), seed=0)
    col = (n, 1)
    rollout = Rollout(obs=obs.reshape(n, 1, *OBS_SHAPE), actions=actions.reshape(n, 1, 2),
                      logprob=logprob.reshape(col), value=values.reshape(col), rewards=rewards.reshape(col),
                      terminated=np.zeros(col, bool), truncated=np.zeros(col, bool),
                      final_values=np.zeros(col, np.float32), next_value=np.zeros(1, np.float32))

    # SB3 with the seed project's PPO settings where they touch the cost of a step (ent_coef is free).
    model = PPO("CnnPolicy", DummyEnv(False), n_steps=n, batch_size=case.batch_size, n_epochs=PPO_EPOCHS,
                ent_coef=0.01, device=device, seed=0)
    model.set_logger(quiet_logger())
    buf = model.rollout_buffer
    buf.observations[:, 0] = obs
    buf.actions[:, 0] = actions
    buf.log_probs[:, 0] = logprob
    buf.values[:, 0] = values
    buf.rewards[:, 0] = rewards
    buf.advantages[:, 0] = advantages
    buf.returns[:, 0] = advantages + values
    buf.full, buf.generator_ready = True, False
    per_call = PPO_EPOCHS * -(-n // case.batch_size)

    def ours(steps: int) -> int:
        done = 0
        for _ in range(max(1, steps // per_call)):
            done += int(learner.update(rollout)["gradient_steps"])
        return done

    def sb3(steps: int) -> int:
        calls = max(1, steps // per_call)
        for _ in range(calls):
            model.train()
        return calls * per_call

    return Sides(ours, sb3, None)


# ----- timing -----------------------------------------------------------------------------------------------
def timed(run: Runner, steps: int, device: str) -> tuple[int, float, float]:
    """(steps done, wall seconds, this process's CPU seconds), the GPU drained before and after."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    done = run(steps)
    sync()
    return done, time.perf_counter() - wall, time.process_time() - cpu


def bench_case(case: Case, device: str, rounds: int, scale: float) -> dict:
    rng = np.random.default_rng(0)
    pool = obs_pool(rng)
    steps = max(1, round((case.cuda_steps if device.startswith("cuda") else case.cpu_steps) * scale))
    if case.algo == "ppo":
        sides = ppo_sides(case, device, pool, rng, rollout_size=PPO_ROLLOUT)
    else:
        sides = off_policy_sides(case, device, pool, rng)
    # Warm-up: first-call allocations, cuDNN autotuning, SB3's one-off rollout-buffer flattening.
    for run in (sides.ours, sides.sb3):
        timed(run, 1, device)

    names = [n for n in ("ours", "sb3", "sb3_sample") if getattr(sides, n) is not None]
    rounds_of: dict[str, list[tuple[int, float, float]]] = {n: [] for n in names}
    for _ in range(rounds):  # the sides alternate, so load from other processes falls on both
        for name in names:
            rounds_of[name].append(timed(getattr(sides, name), steps, device))

    def wall_rate(name: str) -> float:  # total steps over total wall time
        return sum(r[0] for r in rounds_of[name]) / sum(r[1] for r in rounds_of[name])

    def cpu_secs(name: str) -> float:  # CPU seconds a step in the side's best round
        return min(r[2] / r[0] for r in rounds_of[name])

    result = {
        "case": case.name, "algo": case.algo, "device": device, "batch_size": case.batch_size,
        "gradient_steps": {n: sum(r[0] for r in rounds_of[n]) for n in ("ours", "sb3")},
        "ours_updates_per_s": round(wall_rate("ours"), 3), "sb3_updates_per_s": round(wall_rate("sb3"), 3),
        "ratio": round(wall_rate("ours") / wall_rate("sb3"), 3),
        "round_ratios": [round((o[0] / o[1]) / (b[0] / b[1]), 3) for o, b in zip(rounds_of["ours"], rounds_of["sb3"])],
        "target": case.target,
    }
    if case.algo == "dqn":
        result["double_q"] = case.double_q
    judged = result["ratio"]
    if device == "cpu":
        # With one torch thread, CPU seconds per update are what a core of one's own would take in wall time;
        # in the best of the rounds (timeit's rule) they move little with the load other processes put on a
        # shared machine. This is the judged figure on CPU.
        result.update(ours_updates_per_cpu_s=round(1 / cpu_secs("ours"), 3),
                      sb3_updates_per_cpu_s=round(1 / cpu_secs("sb3"), 3),
                      ratio_cpu_time=round(cpu_secs("sb3") / cpu_secs("ours"), 3))
        judged = result["ratio_cpu_time"]
    if "sb3_sample" in names:
        # SB3's train() samples its buffer every step; our side gets pre-built batches. Taking the sampling
        # out of SB3's time gives the stricter comparison.
        if device == "cpu":
            ours_s, sb3_s, sample_s = cpu_secs("ours"), cpu_secs("sb3"), cpu_secs("sb3_sample")
        else:
            ours_s, sb3_s, sample_s = (1 / wall_rate(n) for n in ("ours", "sb3", "sb3_sample"))
        result["sb3_sample_ms"] = round(1000 * sample_s, 2)
        result["ratio_excl_sampling"] = round((sb3_s - sample_s) / ours_s, 3)
    result["met"] = judged >= case.target
    return result


def report(r: dict) -> None:
    line = (f"{r['case']:>15} {r['device']:>4}: ours {r['ours_updates_per_s']:7.2f}/s, "
            f"SB3 {r['sb3_updates_per_s']:7.2f}/s wall, ratio {r['ratio']:.2f} "
            f"(rounds {', '.join(f'{x:.2f}' for x in r['round_ratios'])})")
    if "ratio_cpu_time" in r:
        line += (f"; per CPU-second (best round): ours {r['ours_updates_per_cpu_s']:.2f}, "
                 f"SB3 {r['sb3_updates_per_cpu_s']:.2f}, ratio {r['ratio_cpu_time']:.2f}")
    if "sb3_sample_ms" in r:
        line += f"; SB3 sampling {r['sb3_sample_ms']} ms/step, ratio without it {r['ratio_excl_sampling']:.2f}"
    print(line + f"; target {r['target']:g}: {'met' if r['met'] else 'MISSED'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per case")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the gradient steps per round")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="'all': CPU, then CUDA when torch sees a GPU")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # SB3's buffer-size and CnnPolicy advice
    info = machine_info()
    print(f"{info['nproc']} cores ({info['cpu']}), load average {info['loadavg']}, torch {torch.__version__}, "
          f"{args.threads} torch thread(s)", flush=True)

    devices = ["cpu"] if args.device in ("cpu", "all") else []
    notes = []
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append("cuda")
        else:
            notes.append("CUDA skipped: torch.cuda.is_available() is False")
            print(notes[-1], flush=True)
    unknown = set(args.cases.split(",")) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in CASES)}")
    chosen = [c for c in CASES if c.name in args.cases.split(",")]
    results = []
    for device in devices:
        for case in chosen:
            results.append(bench_case(case, device, args.rounds, args.scale))
            report(results[-1])
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print_json_last({"benchmark": "learner_speed", "machine": info, "torch": torch.__version__,
                     "threads": args.threads, "results": results, "notes": notes})


if __name__ == "__main__":
    main()
