"""System throughput: does the Ray runtime keep up with the parts it is made of?

In one run, on this machine:
  1. raw env speed: one process stepping the (fast) CarRacing env through the shared wrappers with
     random actions, no Ray;
  2. env steps/s arriving in replay with 1 and 2 RolloutWorker actors pushing fragments to a
     ReplayShard actor (random warm-up actions, as at the start of training), per worker, over (1);
  3. learner updates/s inside the system (LearnerActor sampling from the shard over Ray, with its
     prefetch pipeline) over the bare update loop on pre-built batches in one process.
Targets: (2) >= 0.85 per worker-core, (3) >= 0.85. The last line is a JSON object with the figures.

    python benchmarks/system_throughput.py [--seconds 20] [--algo sac_drq] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_info, print_json_last  # noqa: E402

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def raw_env_speed(config, seconds: float) -> float:
    from distracer.envs import make_env

    env = make_env(config.env, seed=1)
    env.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        steps += 1
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def start_actors(config, workers: int, capacity: int):
    """The run's own actors (runtime.actors.RunActors, as the driver builds them): `workers` rollout workers,
    one replay shard, the learner."""
    import copy

    from distracer.envs import env_spaces
    from distracer.runtime.actors import RunActors

    config = copy.deepcopy(config)
    config.resources.num_workers, config.replay.num_shards = workers, 1
    actors = RunActors(config, *env_spaces(config.env), gpus=0.0)
    actors.start(capacity, learner_state=None, replay_dir=None, restart_salt=0)
    return actors


def system_env_speed(config, workers: int, seconds: float) -> float:
    """Env steps/s that land in the shard, driving workers exactly as the driver does in warm-up."""
    import ray

    actors = start_actors(config, workers, capacity=50_000)
    shard, frag = actors.shards[0], config.off_policy.fragment_length
    ray.get([a.collect_fragments.remote(frag, None, True) for a in actors.workers])  # warm up
    start_inserts = ray.get(shard.stats.remote())["inserts"]
    start = time.perf_counter()
    # Two calls queued per worker, as the driver keeps them.
    pending = {a.collect_fragments.remote(frag, None, True): a for a in actors.workers for _ in range(2)}
    while time.perf_counter() - start < seconds:
        [done], _ = ray.wait(list(pending))
        worker = pending.pop(done)
        ray.get(done)
        pending[worker.collect_fragments.remote(frag, None, True)] = worker
    ray.get(list(pending))
    ray.get([a.flush.remote() for a in actors.workers])
    elapsed = time.perf_counter() - start
    # Inserts count entries (frames); reset frames are not env steps but are ~0.1% of entries.
    inserts = ray.get(shard.stats.remote())["inserts"] - start_inserts
    actors.kill()
    return inserts / elapsed


def fake_batch(obs_shape, batch_size: int, rng: np.random.Generator) -> dict:
    return {
        "obs": rng.integers(0, 255, (batch_size, *obs_shape), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (batch_size, 2)).astype(np.float32),
        "reward": rng.normal(size=batch_size).astype(np.float32),
        "next_obs": rng.integers(0, 255, (batch_size, *obs_shape), dtype=np.uint8),
        "discount": np.full(batch_size, 0.99, np.float32),
    }


def bare_update_speed(config, updates: int) -> float:
    import torch

    from distracer.envs import env_spaces
    from distracer.runtime.learner import build_learner

    torch.set_num_threads(1)
    obs_shape, spec = env_spaces(config.env)
    learner = build_learner(config, obs_shape, spec)
    rng = np.random.default_rng(0)
    batches = [fake_batch(obs_shape, config.sac_drq.batch_size, rng) for _ in range(8)]
    for b in batches[:2]:
        learner.update(b)
    start = time.perf_counter()
    for i in range(updates):
        learner.update(batches[i % len(batches)])
    return updates / (time.perf_counter() - start)


def system_update_speed(config, updates: int) -> float:
    """Updates/s of the LearnerActor pulling batches from a filled shard over Ray."""
    import ray

    actors = start_actors(config, 1, capacity=20_000)
    ray.get(actors.workers[0].collect_fragments.remote(1000, None, True))  # fill with real frames
    ray.get(actors.workers[0].flush.remote())
    learner = actors.learner
    ray.get(learner.train_on_replay.remote(2))  # warm up the pipeline
    start = time.perf_counter()
    ray.get(learner.train_on_replay.remote(updates))
    elapsed = time.perf_counter() - start
    timing = ray.get(learner.timing.remote())
    print(f"    learner actor: update {timing['update_seconds']:.2f}s, waiting on replay {timing['wait_seconds']:.2f}s")
    actors.kill()
    return updates / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per env figure")
    parser.add_argument("--updates", type=int, default=60, help="updates per learner figure")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--action-repeat", type=int, default=2)
    args = parser.parse_args()

    import ray

    from distracer.config import load_config

    config = load_config(["tune_configs/sac_drq.yaml"], [
        f"sac_drq.batch_size={args.batch_size}", f"env.action_repeat={args.action_repeat}",
        "learner.device=cpu", "off_policy.fragment_length=64"])
    info = machine_info()
    print(f"machine: {info}")
    result: dict = {"machine": info, "action_repeat": args.action_repeat, "batch_size": args.batch_size}

    raw = raw_env_speed(config, args.seconds)
    print(f"raw env (one process, no Ray):          {raw:8.1f} env steps/s")
    result["raw_env_steps_per_s"] = raw
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (1, 2):
            speed = system_env_speed(config, workers, args.seconds)
            per_worker = speed / workers / raw
            print(f"system, {workers} worker(s) -> replay:       {speed:8.1f} env steps/s "
                  f"= {per_worker:.2f} x raw per worker (target >= 0.85)")
            result[f"system_env_steps_per_s_{workers}w"] = speed
            result[f"per_worker_ratio_{workers}w"] = per_worker
        bare = bare_update_speed(config, args.updates)
        print(f"bare update loop (pre-built batches):   {bare:8.2f} updates/s")
        system = system_update_speed(config, args.updates)
        print(f"learner actor sampling replay over Ray: {system:8.2f} updates/s "
              f"= {system / bare:.2f} x bare (target >= 0.85)")
        result.update(bare_updates_per_s=bare, system_updates_per_s=system, update_ratio=system / bare)
    finally:
        ray.shutdown()
    print_json_last(result)


if __name__ == "__main__":
    main()
