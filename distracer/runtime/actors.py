"""The actors of one run and where they go: replay shards, the learner, the rollout workers.

Used by the driver (which rebuilds them all after a part died), by `distracer tune` (which reserves
`bundle_layout` per trial) and by the throughput benchmark.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from distracer.algos import ActionSpec, spec
from distracer.config import TrainConfig
from distracer.errors import ConfigError
from distracer.replay.layout import ReplayLayout
from distracer.runtime.learner import LearnerActor
from distracer.runtime.worker import RolloutWorker

LEARNER_BUNDLE = 1
"""Bundle 0 is the driver's (and evaluation's, which asks for no CPU); the learner's is 1; then the workers'
and the shards'."""


def num_shards(config: TrainConfig) -> int:
    """Replay shards the run starts: none on-policy."""
    return config.replay.num_shards if spec(config.algo).off_policy else 0


def actor_demands(config: TrainConfig, gpus: float) -> list[dict[str, float]]:
    """What each actor asks for (resource -> amount, zeros left out), in bundle order from the learner on: the
    learner, one per rollout worker, one per replay shard (off-policy)."""
    res = config.resources

    def demand(cpus: float, extra: dict, gpu: float = 0.0) -> dict[str, float]:
        out = {"CPU": float(cpus), "GPU": float(gpu), **{k: float(v) for k, v in extra.items()}}
        return {k: v for k, v in out.items() if v > 0}

    return ([demand(res.learner_cpus, res.learner_resources, gpus)]
            + [demand(res.worker_cpus, res.worker_resources)] * res.num_workers
            + [demand(res.shard_cpus, res.worker_resources)] * num_shards(config))


def bundle_layout(config: TrainConfig, gpus: float) -> list[dict[str, float]]:
    """Placement-group bundles of one run, in the order `RunActors` pins the actors to them.

    0: the driver itself (and evaluation, which asks for 0 CPUs); then `actor_demands` from LEARNER_BUNDLE on.
    `distracer tune` reserves exactly these per trial.
    """
    # Ray refuses an empty bundle: an actor that asks for nothing (shard_cpus 0) gets a token CPU share.
    return [{"CPU": 1.0}] + [d or {"CPU": 0.01} for d in actor_demands(config, gpus)]


def actor_resources(config: TrainConfig, gpus: float) -> tuple[dict[str, float], str]:
    """What the run's actors ask of the cluster in all (resource -> amount), and how that adds up, in words."""
    asked: dict[str, float] = {}
    for d in actor_demands(config, gpus):
        for name, amount in d.items():
            asked[name] = asked.get(name, 0.0) + amount
    res, shards = config.resources, num_shards(config)
    what = (f"learner {res.learner_cpus:g} CPU, {res.num_workers} worker(s) x {res.worker_cpus:g}"
            + (f", {shards} shard(s) x {res.shard_cpus:g}" if shards else ""))
    return asked, what


class RunActors:
    """Replay shards (off-policy), the learner and the rollout workers of one run, built in that order.

    `pin_to_trial_bundles`: the run owns a placement group laid out by `bundle_layout` (a `distracer tune`
    trial); each actor is pinned to its own bundle: left to Ray, a 1-CPU worker can take a slot of the
    learner's 2-CPU bundle and the learner then waits forever (seen on Ray 2.60).
    """

    def __init__(self, config: TrainConfig, obs_shape: tuple[int, int, int], action_spec: ActionSpec, gpus: float,
                 pin_to_trial_bundles: bool = False):
        self.config, self.obs_shape, self.action_spec, self.gpus = config, obs_shape, action_spec, gpus
        self.pin = pin_to_trial_bundles
        self.layout = ReplayLayout.for_run(config, obs_shape, action_spec) if spec(config.algo).off_policy else None
        self.learner: Any = None
        self.workers: list[Any] = []
        self.shards: list[Any] = []
        self.shard_names: list[str] = []

    def replay_capacity(self) -> int:
        """Transitions per shard within `replay.ram_budget` (0 on-policy); ConfigError when impossible."""
        if self.layout is None:
            return 0
        cfg = self.config
        return self.layout.capacity(cfg.replay.ram_budget, cfg.replay.num_shards, cfg.algo_config.batch_size)

    def start(self, capacity: int, learner_state: dict | None, replay_dir: Path | None, restart_salt: int) -> None:
        """Start every actor and wait until each answers. `replay_dir`: a checkpoint's saved replay to restore
        the shards from; `restart_salt` moves a resumed run's workers onto tracks of their own."""
        cfg, res = self.config, self.config.resources
        if self.layout is not None:
            self._start_shards(capacity, replay_dir)
        learner_cls = ray.remote(num_cpus=res.learner_cpus, num_gpus=self.gpus,
                                 resources=res.learner_resources or None)(LearnerActor)
        self.learner = learner_cls.options(**self._bundle(LEARNER_BUNDLE)).remote(
            cfg, self.obs_shape, self.action_spec, self.shards, learner_state, self.gpus > 0)
        self._start_workers(restart_salt)
        ray.get([w.ready.remote() for w in self.workers] + [self.learner.num_updates.remote()])

    def replace_workers(self, config: TrainConfig, restart_salt: int) -> None:
        """Kill the rollout workers and start new ones under `config` (the same spaces and shards, e.g. other
        training rules: `env_switch`); wait until each answers."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.config, self.workers = config, []
        self._start_workers(restart_salt)
        ray.get([w.ready.remote() for w in self.workers])

    def _start_workers(self, restart_salt: int) -> None:
        res = self.config.resources
        worker_cls = ray.remote(num_cpus=res.worker_cpus, max_restarts=-1,
                                resources=res.worker_resources or None)(RolloutWorker)
        for i in range(res.num_workers):
            shard = self.shard_names[i % len(self.shard_names)] if self.shard_names else None
            self.workers.append(worker_cls.options(**self._bundle(LEARNER_BUNDLE + 1 + i)).remote(
                self.config, i, shard, restart_salt))

    def _start_shards(self, capacity: int, replay_dir: Path | None) -> None:
        from distracer.replay.shard import ReplayShardImpl

        cfg = self.config
        shard_cls = ray.remote(num_cpus=cfg.resources.shard_cpus,
                               resources=cfg.resources.worker_resources or None)(ReplayShardImpl)
        run_id = uuid.uuid4().hex[:12]  # actor names are cluster-wide: one run's never meet another's
        first_bundle = LEARNER_BUNDLE + 1 + cfg.resources.num_workers
        for i in range(cfg.replay.num_shards):
            self.shard_names.append(f"distracer-{run_id}-shard-{i}")
            self.shards.append(shard_cls.options(name=self.shard_names[-1], **self._bundle(first_bundle + i)).remote(
                capacity=capacity, seed=cfg.seed * 100 + i, shard_index=i, **self.layout.replay_args()))
        if replay_dir is not None:
            ray.get([s.restore.remote(str(replay_dir / f"shard_{i}")) for i, s in enumerate(self.shards)])

    def _bundle(self, index: int) -> dict[str, Any]:
        pg = get_current_placement_group() if self.pin else None
        if pg is None:
            return {}
        if len(pg.bundle_specs) != len(bundle_layout(self.config, self.gpus)):
            raise ConfigError(f"the trial's placement group has {len(pg.bundle_specs)} bundles; this run lays out "
                              f"{len(bundle_layout(self.config, self.gpus))} (runtime.actors.bundle_layout)")
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=True)}

    def all(self) -> list[Any]:
        return ([self.learner] if self.learner is not None else []) + self.workers + self.shards

    def kill(self) -> None:
        """Kill every actor for good (no restart) and forget them."""
        for actor in self.all():
            ray.kill(actor, no_restart=True)
        self.learner, self.workers, self.shards, self.shard_names = None, [], [], []

    def dead_parts(self, timeout_s: float = 60.0) -> list[str]:
        """Names of the actors that do not answer within `timeout_s` in all (probed at once; a restarting
        rollout worker answers once it is back)."""
        named = [("the learner", self.learner)] + [(f"replay shard {i}", s) for i, s in enumerate(self.shards)]
        named += [(f"rollout worker {i}", w) for i, w in enumerate(self.workers)]
        probes = [(name, actor.__ray_ready__.remote()) for name, actor in named if actor is not None]
        deadline, dead = time.time() + timeout_s, []
        for name, ref in probes:
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.time()))
            except (RayActorError, GetTimeoutError):
                dead.append(name)
        return dead

    def replay_fill(self) -> float | None:
        """Fraction of the replay's capacity in use over all shards; None on-policy."""
        if not self.shards:
            return None
        stats = ray.get([s.stats.remote() for s in self.shards])
        return sum(s["size"] for s in stats) / max(1, sum(s["capacity"] for s in stats))

    def save_replay(self, directory: Path) -> None:
        """Each shard writes its replay to `directory/shard_<i>`."""
        ray.get([s.save.remote(str(directory / f"shard_{i}")) for i, s in enumerate(self.shards)])

    def placement(self) -> dict[str, Any]:
        """Node id of each actor, and the learner's torch device: where the learner, workers and shards ran."""

        def node_of(actor: Any) -> str:
            return ray.get(actor.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id()))

        return {"learner": node_of(self.learner), "learner_device": ray.get(self.learner.device.remote()),
                "workers": [node_of(w) for w in self.workers], "shards": [node_of(s) for s in self.shards]}
