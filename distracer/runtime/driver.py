"""The driver: builds the actors, holds the replay ratio, evaluates, checkpoints, logs, reports.

Off-policy (SAC+DrQ, DQN)::

    RolloutWorker xN --fragments--> ReplayShard xS --batches (prefetched)--> LearnerActor
          ^                                                                      |
          +------------------- weights (object ref + version) -------------------+

The driver only ever holds counts, metrics and object refs; sample data never passes through it.
On-policy (PPO) runs synchronously: every worker collects a fixed-length rollout with the current
weights, the learner updates on all of them, then publishes new weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from distracer.algos import ActionSpec
from distracer.checkpoint import (
    check_writable_dir,
    list_checkpoints,
    load_checkpoint,
    remove_unfinished_writes,
    save_checkpoint,
)
from distracer.config import TrainConfig, config_from_dict
from distracer.envs import make_env
from distracer.errors import ConfigError
from distracer.evaluate import EvalResult, evaluate_policy
from distracer.runtime.learner import LearnerActor
from distracer.runtime.logger import RunLogger
from distracer.runtime.ray_setup import check_fit, init_ray, learner_gpus
from distracer.runtime.worker import CollectStats, MissingWeightsError, RolloutWorker

Reporter = Callable[[dict[str, Any], Path | None], None]
OFF_POLICY = ("sac_drq", "dqn")
PART_DIED = (RayActorError, ObjectLostError)
"""What a dead actor's calls raise: its own death, or a lost object it owned (weights, a rollout)."""


@dataclass
class Counters:
    """Everything a resumed run must continue from (besides the learner's own state)."""

    env_steps: int = 0
    num_updates: int = 0
    episodes: int = 0
    weights_version: int = 0
    wall_seconds: float = 0.0
    next_eval: int = 0
    next_checkpoint: int = 0
    best_eval: float = -math.inf
    last_eval: float = float("nan")
    last_eval_std: float = float("nan")
    resumes: int = 0
    worker_restarts: int = 0
    recoveries: int = 0
    recent_returns: list[float] = field(default_factory=list)


@ray.remote(num_cpus=0)
def _evaluate_remote(weights, env_config, seeds) -> EvalResult:
    # num_cpus=0: evaluation is periodic and light next to training, and must never wait for a CPU
    # that the workers hold (it would deadlock a run that fills its placement group).
    return evaluate_policy(weights, env_config, seeds)


def bundle_layout(config: TrainConfig, gpus: float) -> list[dict[str, float]]:
    """Placement-group bundles of one run, in the order `_bundle` pins the actors to them.

    0: the driver itself (and evaluation, which asks for 0 CPUs); 1: the learner; then one per rollout
    worker; then one per replay shard (off-policy). `distracer tune` reserves exactly these per trial.
    """
    res = config.resources

    def bundle(cpus: float, extra: dict | None = None, gpu: float = 0.0) -> dict[str, float]:
        out = {"CPU": float(cpus), **{k: float(v) for k, v in (extra or {}).items()}}
        if gpu > 0:
            out["GPU"] = float(gpu)
        return {k: v for k, v in out.items() if v > 0} or {"CPU": 0.01}  # Ray refuses an empty bundle

    shards = config.replay.num_shards if config.algo in OFF_POLICY else 0
    return ([bundle(1.0), bundle(res.learner_cpus, res.learner_resources, gpus)]
            + [bundle(res.worker_cpus, res.worker_resources)] * res.num_workers
            + [bundle(res.shard_cpus, res.worker_resources)] * shards)


def actor_resources(config: TrainConfig, gpus: float) -> tuple[dict[str, float], str]:
    """What the run's actors ask of the cluster in all (resource -> amount), and how that adds up, in words."""
    res = config.resources
    shards = config.replay.num_shards if config.algo in OFF_POLICY else 0
    asked: dict[str, float] = {"CPU": res.learner_cpus + res.num_workers * res.worker_cpus + shards * res.shard_cpus}
    if gpus:
        asked["GPU"] = gpus
    for name, amount in res.learner_resources.items():
        asked[name] = asked.get(name, 0.0) + float(amount)
    for name, amount in res.worker_resources.items():
        asked[name] = asked.get(name, 0.0) + float(amount) * (res.num_workers + shards)
    what = (f"learner {res.learner_cpus:g} CPU, {res.num_workers} worker(s) x {res.worker_cpus:g}"
            + (f", {shards} shard(s) x {res.shard_cpus:g}" if shards else ""))
    return {k: v for k, v in asked.items() if v > 0}, what


def probe_spaces(config: TrainConfig) -> tuple[tuple[int, int, int], ActionSpec]:
    """Observation shape and action spec of the configured env, without stepping it."""
    env = make_env(config.env, stock=True)
    try:
        return tuple(env.observation_space.shape), ActionSpec.from_space(env.action_space)
    finally:
        env.close()


class Driver:
    """One training run. `run()` returns the final metrics; safe to call from a Tune trainable."""

    def __init__(self, config: TrainConfig, resume: str | Path | None = None, reporter: Reporter | None = None,
                 handle_signals: bool = True):
        self.config = config
        self.reporter = reporter
        self.handle_signals = handle_signals
        self.counters = self._fresh_counters()
        self.checkpoint = load_checkpoint(resume) if resume else None
        if self.checkpoint is not None:
            self._check_resume_compatible()
        self.run_dir = check_writable_dir(config.run_dir)  # before Ray and any actor
        # Temporary directories of writes a killed run left behind (never sealed, never read).
        self.removed_tmp = [p for d in ("checkpoints", "best") for p in remove_unfinished_writes(self.run_dir / d)]
        self.stop_requested = threading.Event()
        self.started_ray = False
        self.actors: list[Any] = []
        self.shards: list[Any] = []
        self.shard_names: list[str] = []
        self.restarting: set[int] = set()  # workers whose death was counted and that have not returned since
        self._fill: float | None = None  # replay fill, refreshed at most every 5 s
        self._fill_time = 0.0
        self._saved_progress: tuple | None = None  # what the last checkpoint held (to skip identical ones)
        self.workers: list[Any] = []
        self.eval_ref: ray.ObjectRef | None = None
        self.last_checkpoint: Path | None = None
        self.eval_started_at = -1
        self.last_metrics: dict[str, float] = {}
        self.next_timed_checkpoint: float | None = None  # seconds since start (checkpoint.every_minutes)
        self.eval_state: tuple[ray.ObjectRef, dict[str, Any]] | None = None  # learner state + counters at eval
        self.best_checkpoint: Path | None = None
        self.training_ended_at: float | None = None
        self.recoveries_here = 0  # resources.max_recoveries counts this process's recoveries, not the run's
        # What a recovery rebuilds from: the newest checkpoint this process wrote, else the one it resumed from.
        self.recovery_point: Path | None = self.checkpoint.path if self.checkpoint is not None else None

    def _fresh_counters(self, resumes: int = 0) -> Counters:
        """The counters of a run at step 0 (a new run, or a recovery before its first checkpoint)."""
        cfg = self.config
        return Counters(next_eval=cfg.eval.every_env_steps or cfg.total_env_steps,
                        next_checkpoint=cfg.checkpoint.every_env_steps, resumes=resumes)

    # ------------------------------------------------------------------ setup
    def _check_resume_compatible(self) -> None:
        saved = self.checkpoint.state
        if saved.get("algo") != self.config.algo:
            raise ConfigError(f"checkpoint {str(self.checkpoint.path)!r} is a {saved.get('algo')} run; "
                              f"this config trains {self.config.algo}")
        saved_env = config_from_dict(saved["config"]).env
        if saved_env != self.config.env:
            raise ConfigError(f"checkpoint {str(self.checkpoint.path)!r} was trained with env {saved_env}; "
                              f"the config asks for {self.config.env}")
        counters = Counters(**{k: v for k, v in saved["counters"].items() if k in Counters.__dataclass_fields__})
        counters.resumes += 1
        self.counters = counters

    def _set_aside_newer_checkpoints(self) -> None:
        """Resuming from an older checkpoint forks the run: move the newer ones out of the way (not delete),
        so pruning and `--resume auto` only ever see this timeline."""
        if self.checkpoint is None:
            return
        root = self.run_dir / "checkpoints"
        newer = [p for p in list_checkpoints(root) if p.name > self.checkpoint.path.name]
        if not newer or self.checkpoint.path.parent.resolve() != root.resolve():
            return
        aside = self.run_dir / "checkpoints_set_aside" / time.strftime("%Y%m%d-%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        for path in newer:
            path.rename(aside / path.name)
        self.logger.info(f"distracer: resumed from an older checkpoint; {len(newer)} newer one(s) moved to {aside}")

    def _setup(self) -> None:
        cfg = self.config
        self.started_ray = init_ray(cfg.resources)
        gpus = self.gpus = learner_gpus(cfg.resources)  # refuses a GPU the cluster lacks, before any actor starts
        if get_current_placement_group() is None:  # a Tune trial's placement group already holds its resources
            asked, what = actor_resources(cfg, gpus)
            check_fit(asked, what, cfg.resources.fit_timeout_s, embedded=self.started_ray and not self._joined())
        self.obs_shape, self.action_spec = probe_spaces(cfg)
        capacity = self._replay_capacity() if cfg.algo in OFF_POLICY else 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
        self.logger = RunLogger(self.run_dir, cfg, start_steps=self.counters.env_steps,
                                start_updates=self.counters.num_updates)
        self._set_aside_newer_checkpoints()
        if self.removed_tmp:
            self.logger.info(f"distracer: removed {len(self.removed_tmp)} unfinished checkpoint write(s) of a killed "
                             f"run: {', '.join(p.name for p in self.removed_tmp)}")
        if self.checkpoint is not None:  # a resumed run still owns its best so far
            self.best_checkpoint = ([None] + list_checkpoints(self.run_dir / "best"))[-1]
        self.capacity = capacity
        self._build_actors()

    def _build_actors(self) -> None:
        """Shards (restored from the checkpoint's replay, if any), learner (from its state), workers; then
        the first weights. Also how a recovery rebuilds the run after a part died."""
        cfg = self.config
        gpus = self.gpus
        learner_state = self.checkpoint.learner_state if self.checkpoint else None
        if cfg.algo in OFF_POLICY:
            self._create_shards(self.capacity)
        self.learner = ray.remote(num_cpus=cfg.resources.learner_cpus, num_gpus=gpus,
                                  resources=cfg.resources.learner_resources or None)(LearnerActor).options(
            **self._bundle(1)).remote(
            cfg, self.obs_shape, self.action_spec, self.shards, learner_state, gpus > 0)
        self.actors.append(self.learner)
        worker_cls = ray.remote(num_cpus=cfg.resources.worker_cpus, max_restarts=-1,
                                resources=cfg.resources.worker_resources or None)(RolloutWorker)
        for i in range(cfg.resources.num_workers):
            shard = self.shard_names[i % len(self.shard_names)] if self.shard_names else None
            self.workers.append(worker_cls.options(**self._bundle(2 + i)).remote(cfg, i, shard, self.counters.resumes))
        self.actors += self.workers
        ray.get([w.ready.remote() for w in self.workers] + [self.learner.num_updates.remote()])
        self.weights_ref = self._publish()
        replay_restored = self.checkpoint is not None and self.checkpoint.replay_dir is not None
        if self.checkpoint is not None and not replay_restored:
            self.ratio_base = (self.counters.num_updates, self.counters.env_steps)
        else:
            self.ratio_base = (0, 0)

    def _joined(self) -> bool:
        return bool(self.config.resources.address or os.environ.get("RAY_ADDRESS"))

    def _bundle(self, index: int) -> dict[str, Any]:
        """Pin an actor to its own bundle when this run owns a placement group laid out by `bundle_layout`
        (a `distracer tune` trial). Left to Ray, a 1-CPU worker can take a slot of the learner's 2-CPU
        bundle and the learner then waits forever (seen on Ray 2.60)."""
        pg = get_current_placement_group()
        if pg is None or len(pg.bundle_specs) != len(bundle_layout(self.config, self.gpus)):
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=True)}

    def _replay_capacity(self) -> int:
        from distracer.replay.sizing import capacity_from_budget, parse_bytes

        cfg, algo = self.config, self.config.algo_config
        frame_shape = self.obs_shape[1:] if cfg.env.grayscale else (*self.obs_shape[1:], 3)
        discrete = self.action_spec.kind == "discrete"
        return capacity_from_budget(parse_bytes(cfg.replay.ram_budget), cfg.replay.num_shards, frame_shape,
                                    cfg.replay.compress, batch_size=algo.batch_size,
                                    action_shape=() if discrete else (self.action_spec.n,),
                                    action_dtype=np.int64 if discrete else np.float32)

    def _create_shards(self, capacity: int) -> None:
        from distracer.replay.shard import ReplayShardImpl

        cfg, algo = self.config, self.config.algo_config
        frame_shape = self.obs_shape[1:] if cfg.env.grayscale else (*self.obs_shape[1:], 3)
        discrete = self.action_spec.kind == "discrete"
        shard_cls = ray.remote(num_cpus=cfg.resources.shard_cpus,
                               resources=cfg.resources.worker_resources or None)(ReplayShardImpl)
        run_id = uuid.uuid4().hex[:12]  # actor names are cluster-wide: one run's never meet another's
        for i in range(cfg.replay.num_shards):
            self.shard_names.append(f"distracer-{run_id}-shard-{i}")
            placement = self._bundle(2 + cfg.resources.num_workers + i)
            shard = shard_cls.options(name=self.shard_names[-1], **placement).remote(
                capacity=capacity, frame_shape=tuple(frame_shape),
                action_shape=() if discrete else (self.action_spec.n,),
                action_dtype=np.int64 if discrete else np.float32,
                frame_stack=cfg.env.frame_stack, n_step=algo.n_step, gamma=algo.gamma,
                compress=cfg.replay.compress, seed=cfg.seed * 100 + i, shard_index=i)
            self.shards.append(shard)
        self.actors += self.shards
        if self.checkpoint is not None and self.checkpoint.replay_dir is not None:
            ray.get([s.restore.remote(str(self.checkpoint.replay_dir / f"shard_{i}"))
                     for i, s in enumerate(self.shards)])

    def _publish(self) -> ray.ObjectRef:
        [ref] = ray.get(self.learner.publish.remote())
        self.counters.weights_version += 1
        return ref

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        previous: dict = {}
        try:
            self._setup()
            # After ray.init, which installs handlers of its own; a Ctrl-C during setup just tears down.
            previous = self._install_signal_handlers()
            self.start_time = time.time() - self.counters.wall_seconds
            minutes = self.config.checkpoint.every_minutes
            if minutes:  # on the wall-clock grid, which a resumed run continues
                period = 60 * minutes
                self.next_timed_checkpoint = (math.floor(self.counters.wall_seconds / period) + 1) * period
            self.logger.info(f"distracer: training {self.config.algo} for {self.config.total_env_steps:,} env steps "
                             f"with {self.config.resources.num_workers} worker(s) -> {self.run_dir}")
            died: BaseException | None = None
            while True:
                try:
                    if died is not None:  # inside the try: a part that dies during the rebuild is one more death
                        self._recover(died)
                        died = None
                    self._run_off_policy() if self.config.algo in OFF_POLICY else self._run_on_policy()
                    break
                except PART_DIED as exc:
                    died = exc
            # Training time ends here; the closing evaluation is not part of it (benchmarks plot against it).
            self.training_ended_at = time.time()
            try:
                self._finish_eval(block=True)
                self._evaluate_now_if_needed()
                self._save()
            except PART_DIED as exc:
                raise ConfigError(f"{self._died_line(exc)} while the run was ending; its training is done; the newest "
                                  f"checkpoint is {self.recovery_point or 'none'}") from None
            summary = self._summary()
            summary["placement"] = self._placement()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            return summary
        finally:
            self._teardown()
            self._restore_signal_handlers(previous)

    # ----- recovery
    def _dead_parts(self) -> list[str]:
        """Names of the actors that no longer answer (a restarting rollout worker answers once it is back)."""
        named = [("the learner", self.learner)] + [(f"replay shard {i}", s) for i, s in enumerate(self.shards)]
        named += [(f"rollout worker {i}", w) for i, w in enumerate(self.workers)]
        dead = []
        for name, actor in named:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=60)
            except (RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(name)
        return dead

    def _died_line(self, exc: BaseException) -> str:
        dead = self._dead_parts() or [f"a part of the run ({type(exc).__name__})"]
        return f"{' and '.join(dead)} died"

    def _recover(self, exc: BaseException) -> None:
        """A part died: rebuild every actor from this run's newest checkpoint (the learner with its optimiser and
        counters, the replay if it was saved) and go on; the work since that checkpoint is redone. Past
        `resources.max_recoveries` in this process the run stops with one line.

        The checkpoint is the newest this process wrote, else the one it resumed from, else none (step 0): never
        another run's that happens to share the run directory. The wall-clock keeps running (the lost work took
        real time: `max_minutes` and the timed checkpoints count it)."""
        what, c, limit = self._died_line(exc), self.counters, self.config.resources.max_recoveries
        point = self.recovery_point
        if self.recoveries_here >= limit:
            where = f"resume from {point} with --resume auto" if point else "no checkpoint was written yet"
            raise ConfigError(f"{what} after {self.recoveries_here} recover(ies) "
                              f"(resources.max_recoveries={limit}); {where}") from None
        self.recoveries_here += 1
        self.logger.info(f"distracer: {what}; rebuilding the run from "
                         f"{point.name if point else 'step 0 (no checkpoint yet)'}; the env steps since are redone")
        self._kill_actors()
        # What the rollback must not undo: how often things died, and the best evaluation (kept in best/).
        carried = {"recoveries": c.recoveries + 1, "worker_restarts": c.worker_restarts, "best_eval": c.best_eval}
        wall_seconds = time.time() - self.start_time
        self.checkpoint = load_checkpoint(point) if point else None
        if self.checkpoint is not None:
            self._check_resume_compatible()  # counters from the checkpoint
        else:
            self.counters = self._fresh_counters(resumes=c.resumes + 1)
        carried["best_eval"] = max(carried["best_eval"], self.counters.best_eval)
        for name, value in carried.items():
            setattr(self.counters, name, value)
        self.counters.wall_seconds = wall_seconds
        self.last_checkpoint, self._saved_progress = point, None
        self.eval_ref = self.eval_state = None
        self.eval_started_at = -1
        self.logger.scalar("system/recoveries", self.counters.recoveries, self.counters.env_steps)
        self.logger.restart_rates(self.counters.env_steps, self.counters.num_updates)
        self._build_actors()

    def _kill_actors(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.workers, self.shards, self.shard_names = [], [], [], []
        self.restarting.clear()

    def _done(self) -> bool:
        cfg = self.config
        if self.stop_requested.is_set():
            return True
        if cfg.max_minutes and time.time() - self.start_time > cfg.max_minutes * 60:
            self.logger.info("distracer: time budget reached")
            return True
        return self.counters.env_steps >= cfg.total_env_steps

    # ----- off-policy
    def _allowed_updates(self) -> int:
        """Updates the replay ratio allows after the steps collected so far.

        Counted from `ratio_base` (updates, env steps): (0, 0) for a fresh run or a resume with its
        replay; the resume point otherwise, so an empty replay refills for `learning_starts` steps
        before updates resume, with no burst of owed updates after it.
        """
        algo = self.config.algo_config
        base_updates, base_steps = self.ratio_base
        steps = self.counters.env_steps - base_steps - algo.learning_starts
        return base_updates + int(max(0, steps) * algo.updates_per_step)

    def _run_off_policy(self) -> None:
        cfg, algo = self.config, self.config.algo_config
        frag = cfg.resources.fragment_length
        # Workers pause when the learner is this many updates behind: about two fragments' worth.
        max_lag = max(1.0, 2 * frag * cfg.resources.envs_per_worker * cfg.resources.num_workers * algo.updates_per_step)
        sent_version = [0] * len(self.workers)
        pending: dict[ray.ObjectRef, tuple[str, int]] = {}
        # Two collect calls queued per worker: it starts the next as soon as one returns, never idling
        # for a driver round trip.
        in_flight = [0] * len(self.workers)
        steps_per_call = frag * cfg.resources.envs_per_worker  # never collect far past total_env_steps
        learner_busy = False
        since_publish = 0

        def launch_worker(i: int) -> None:
            warmup = self.counters.env_steps < algo.learning_starts  # random actions: only a fresh run
            weights = None if sent_version[i] == self.counters.weights_version else self.weights_ref
            ref = self.workers[i].collect.remote(frag, weights, warmup, self._epsilon(i))
            sent_version[i] = self.counters.weights_version
            pending[ref] = ("worker", i)
            in_flight[i] += 1

        def finish(ref: ray.ObjectRef) -> None:
            nonlocal learner_busy, since_publish
            kind, arg = pending.pop(ref)
            if kind == "worker":
                in_flight[arg] -= 1
                if self._on_worker_done(ref, arg):
                    sent_version[arg] = -1  # a restarted worker needs the weights again
                return
            learner_busy = False
            metrics = ray.get(ref)
            since_publish += arg
            self.counters.num_updates = int(metrics.pop("num_updates"))
            self.last_metrics = metrics
            if since_publish >= cfg.resources.weights_every:
                self.weights_ref = self._publish()
                since_publish = 0

        def drain() -> None:
            """Let the work in flight finish and reach the replay: counters, learner and replay are then one
            consistent moment (what a checkpoint must hold)."""
            for ref in list(pending):
                finish(ref)
            for i, worker in enumerate(self.workers):
                try:
                    ray.get(worker.flush.remote())
                except RayActorError as exc:
                    if isinstance(exc, RayTaskError):
                        raise
                    self._worker_died(i, exc)
                    sent_version[i] = -1  # its restart needs the weights again

        while not self._done():
            for i in range(len(self.workers)):
                while (in_flight[i] < 2 and self._allowed_updates() - self.counters.num_updates <= max_lag
                       and self.counters.env_steps + sum(in_flight) * steps_per_call < cfg.total_env_steps):
                    launch_worker(i)
            todo = self._allowed_updates() - self.counters.num_updates
            if not learner_busy and todo > 0:
                n = min(todo, cfg.resources.weights_every - since_publish)
                pending[self.learner.train.remote(n)] = ("learner", n)
                learner_busy = True
            if not pending:
                time.sleep(0.01)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                finish(ref)
            self._periodic(drain)
        # Bring the updates up to the replay ratio for every step collected: the run ends exactly on ratio.
        drain()
        todo = self._allowed_updates() - self.counters.num_updates
        if todo > 0 and not self.stop_requested.is_set():
            metrics = ray.get(self.learner.train.remote(todo))
            self.counters.num_updates = int(metrics.pop("num_updates"))
            self.last_metrics = metrics
            self.weights_ref = self._publish()

    def _epsilon(self, worker_index: int) -> float | None:
        exploration = getattr(self.config.algo_config, "worker_epsilon", None)
        if exploration is None:
            return None
        return exploration(self.counters.env_steps, worker_index, len(self.workers))

    def _on_worker_done(self, ref: ray.ObjectRef, index: int) -> bool:
        """Count a worker's steps and episodes; True if the worker died (Ray restarts it)."""
        try:
            stats: CollectStats = ray.get(ref)
        except MissingWeightsError:  # it died and came back between two calls: it needs the weights again
            self._worker_died(index)
            return True
        except RayActorError as exc:
            if isinstance(exc, RayTaskError):  # the worker lives; a part it calls (its shard) died: recover
                raise
            self._worker_died(index, exc)
            return True
        self.restarting.discard(index)
        self._count(stats)
        return False

    def _worker_died(self, index: int, exc: BaseException | None = None) -> None:
        if getattr(exc, "actor_init_failed", False):  # Ray cannot bring it back: waiting would spin forever
            raise ConfigError(f"rollout worker {index} died and cannot restart ({str(exc).splitlines()[0][:200]})")
        if index not in self.restarting:  # each call in flight fails; one death is one restart
            self.restarting.add(index)
            self.logger.info(f"distracer: rollout worker {index} died; Ray restarts it and training goes on")
            self.counters.worker_restarts += 1
            self.logger.scalar("system/worker_restarts", self.counters.worker_restarts, self.counters.env_steps)

    def _count(self, stats: CollectStats) -> None:
        self.counters.env_steps += stats.env_steps
        self.counters.episodes += len(stats.episode_returns)
        for ret, length in zip(stats.episode_returns, stats.episode_lengths):
            self.counters.recent_returns = (self.counters.recent_returns + [ret])[-20:]
            self.logger.episode(ret, length, self.counters.env_steps)

    # ----- on-policy
    def _run_on_policy(self) -> None:
        """Collect a rollout on every worker, update on all of them, publish, repeat.

        `ppo.policy_lag=0` is exact synchronous PPO: workers wait for the update. With 1, workers collect the
        next rollout with the weights before the update while the learner trains, so both run at once (on
        separate cores) and each rollout is one weights version stale; PPO's ratio is taken against the
        behaviour policy's stored log-probs, as in APPO / IMPALA-style PPO."""
        steps, lag = self.config.algo_config.num_steps, self.config.algo_config.policy_lag

        def launch() -> list[Any]:
            return [w.collect_rollout.options(num_returns=2).remote(steps, self.weights_ref) for w in self.workers]

        calls: list[Any] | None = None
        while not self._done():
            calls = calls or launch()
            metrics_ref = self.learner.train_on_rollouts.remote(*[c[0] for c in calls])
            stats_refs = [c[1] for c in calls]
            calls = launch() if lag else None  # lag: with the weights the learner is updating right now
            collected = self._rollout_stats(stats_refs)
            if collected is None:  # a worker died: Ray restarts it; the update on its rollout fails, untouched
                with contextlib.suppress(RayTaskError, *PART_DIED):
                    ray.get(metrics_ref)
                continue
            for stats in collected:
                self._count(stats)
            metrics = ray.get(metrics_ref)
            self.counters.num_updates = int(metrics.pop("num_updates"))
            self.last_metrics = metrics
            self.weights_ref = self._publish()
            self._periodic()
        for stats in self._rollout_stats([c[1] for c in calls or []]) or []:  # lag: collected, not trained on,
            self._count(stats)                                                # counted all the same

    def _rollout_stats(self, refs: list[ray.ObjectRef]) -> list[CollectStats] | None:
        """Each worker's rollout stats, or None when a worker died collecting (counted as one restart; the
        rollouts of that round are then dropped, uncounted and untrained). Other failures propagate."""
        out, died = [], False
        for index, ref in enumerate(refs):
            try:
                out.append(ray.get(ref))
                self.restarting.discard(index)
            except RayActorError as exc:
                if isinstance(exc, RayTaskError):
                    raise
                self._worker_died(index, exc)
                died = True
        return None if died else out

    # ------------------------------------------------------------------ periodic work
    def _periodic(self, drain: Callable[[], None] | None = None) -> None:
        """Evaluation, checkpoints and the progress line. `drain` (off-policy) settles the work in flight
        before a checkpoint, so it holds one consistent moment."""
        c = self.counters
        self._finish_eval(block=False)
        if self.config.eval.every_env_steps and c.env_steps >= c.next_eval and self.eval_ref is None:
            self._start_eval()
            c.next_eval += self.config.eval.every_env_steps
        if c.env_steps >= c.next_checkpoint or self._checkpoint_due_by_time():
            if drain is not None:
                drain()
            while c.next_checkpoint <= c.env_steps:  # before saving: a resume must not save this step again
                c.next_checkpoint += self.config.checkpoint.every_env_steps
            self._save()
        self.logger.progress(c, self.last_metrics, self._replay_fill())

    def _checkpoint_due_by_time(self) -> bool:
        minutes = self.config.checkpoint.every_minutes
        if self.next_timed_checkpoint is None:
            return False
        elapsed = time.time() - self.start_time
        if elapsed < self.next_timed_checkpoint:
            return False
        while self.next_timed_checkpoint <= elapsed:
            self.next_timed_checkpoint += 60 * minutes
        return True

    def _eval_seeds(self) -> list[int]:
        start = self.config.eval.seed + 1000 * self.counters.weights_version
        return list(range(start, start + self.config.eval.episodes))

    def _start_eval(self) -> None:
        self.eval_started_at = self.counters.env_steps
        if self.config.checkpoint.keep_best:
            # The learner's state at exactly the evaluated weights: publish (after any update in flight), then
            # ask for the state; the actor runs calls in order and no update is sent in between.
            self.weights_ref = self._publish()
            self.eval_state = (self.learner.state_dict.remote(), copy.deepcopy(self.counters.__dict__))
        self.eval_ref = _evaluate_remote.remote(self.weights_ref, self.config.env, self._eval_seeds())

    def _finish_eval(self, block: bool) -> None:
        if self.eval_ref is None:
            return
        ready, _ = ray.wait([self.eval_ref], timeout=None if block else 0)
        if not ready:
            return
        result: EvalResult = ray.get(self.eval_ref)
        self.eval_ref = None
        c = self.counters
        c.last_eval, c.last_eval_std = result.mean, result.std
        if result.mean > c.best_eval and self.eval_state is not None:
            self._save_best(result)
        self.eval_state = None
        c.best_eval = max(c.best_eval, result.mean)
        self.logger.evaluation(result, self.eval_started_at)
        if self.reporter is not None:
            self.reporter(self._summary(), None)

    def _evaluate_now_if_needed(self) -> None:
        """A run always ends with an evaluation of its final weights (unless one just ran on them)."""
        if self.eval_started_at == self.counters.env_steps:
            return
        self._start_eval()
        self._finish_eval(block=True)

    def _replay_fill(self) -> float | None:
        if self.shards and time.time() - self._fill_time > 5:
            self._fill_time = time.time()
            stats = ray.get([s.stats.remote() for s in self.shards])
            self._fill = sum(s["size"] for s in stats) / max(1, sum(s["capacity"] for s in stats))
        return self._fill

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> Path:
        c = self.counters
        progress = (c.env_steps, c.num_updates, c.last_eval, c.episodes)
        if self.last_checkpoint is not None and progress == self._saved_progress:
            return self.last_checkpoint  # nothing new since the last one
        self._saved_progress = progress
        c.wall_seconds = (self.training_ended_at or time.time()) - self.start_time
        learner_state = ray.get(self.learner.state_dict.remote())
        state = {"algo": self.config.algo, "config": self.config.to_dict(),
                 "counters": {k: v for k, v in c.__dict__.items()}}
        write_replay = self._write_replay if self.config.checkpoint.save_replay and self.shards else None
        self.last_checkpoint = save_checkpoint(self.run_dir / "checkpoints", learner_state, state, c.env_steps,
                                               write_replay, keep=self.config.checkpoint.keep)
        self.recovery_point = self.last_checkpoint
        self.logger.info(f"distracer: checkpoint {self.last_checkpoint}")
        if self.reporter is not None:
            self.reporter(self._summary(), self.last_checkpoint)
        return self.last_checkpoint

    def _save_best(self, result: EvalResult) -> None:
        """Keep the evaluated weights of the best evaluation so far as `run_dir/best/ckpt_*` (one checkpoint,
        the same format): what a run that peaked and then slid back still has to show for itself."""
        state_ref, counters = self.eval_state
        counters = {**counters, "last_eval": result.mean, "last_eval_std": result.std,
                    "best_eval": max(self.counters.best_eval, result.mean)}
        state = {"algo": self.config.algo, "config": self.config.to_dict(), "counters": counters,
                 "evaluation": {"mean": result.mean, "std": result.std, "returns": result.returns,
                                "seeds": result.seeds}}
        best = save_checkpoint(self.run_dir / "best", ray.get(state_ref), state, counters["env_steps"])
        for other in list_checkpoints(self.run_dir / "best"):  # sealed before the older one goes
            if other != best:
                shutil.rmtree(other, ignore_errors=True)
        self.best_checkpoint = best
        self.logger.info(f"distracer: new best evaluation {result.mean:.1f}; kept as {self.best_checkpoint}")

    def _write_replay(self, directory: Path) -> None:
        ray.get([s.save.remote(str(directory / f"shard_{i}")) for i, s in enumerate(self.shards)])

    def _summary(self) -> dict[str, Any]:
        c = self.counters
        elapsed = max(1e-9, time.time() - self.start_time)
        out = {
            "env_steps": c.env_steps, "num_updates": c.num_updates, "episodes": c.episodes,
            "weights_version": c.weights_version, "worker_restarts": c.worker_restarts, "recoveries": c.recoveries,
            "eval_return_mean": c.last_eval,
            "eval_return_std": c.last_eval_std, "best_eval_return": c.best_eval,
            "episode_return_mean": float(np.mean(c.recent_returns)) if c.recent_returns else float("nan"),
            "env_steps_per_s": c.env_steps / elapsed,  # over the whole run: a resume keeps both its steps and time
            "wall_seconds": elapsed,
            "replay_ratio": c.num_updates / max(1, c.env_steps - self._learning_starts()),
        }
        out.update({f"learner/{k}": v for k, v in self.last_metrics.items()})
        if self.last_checkpoint is not None:
            out["checkpoint"] = str(self.last_checkpoint)
        if self.best_checkpoint is not None:
            out["best_checkpoint"] = str(self.best_checkpoint)
        return out

    def _placement(self) -> dict[str, Any]:
        """Node id of each actor: shows where the learner, workers and shards ran."""

        def node_of(actor: Any) -> str:
            return ray.get(actor.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id()))

        return {"learner": node_of(self.learner), "workers": [node_of(w) for w in self.workers],
                "shards": [node_of(s) for s in self.shards]}

    def _learning_starts(self) -> int:
        return int(getattr(self.config.algo_config, "learning_starts", 0))

    # ------------------------------------------------------------------ shutdown
    def _install_signal_handlers(self) -> dict:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def request_stop(signum, _frame):
            self.logger.info(f"distracer: {signal.Signals(signum).name} received; stopping after a final checkpoint")
            self.stop_requested.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _teardown(self) -> None:
        self._kill_actors()
        if hasattr(self, "logger"):
            self.logger.close()
        if self.started_ray:
            ray.shutdown()


def train(config: TrainConfig, resume: str | Path | None = None, reporter: Reporter | None = None,
          handle_signals: bool = True) -> dict[str, Any]:
    """Train with `config`; resume from a checkpoint (or a run dir's newest one) when given."""
    return Driver(config, resume, reporter, handle_signals).run()
