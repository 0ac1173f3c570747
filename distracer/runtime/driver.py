"""The driver of one run: starts Ray and the run's actors, runs the algorithm's loop, and around it schedules
evaluations and checkpoints, logs, reports, handles signals, and rebuilds the run when a part died.

Who does what (docs/ARCHITECTURE.md): `actors.RunActors` builds and places the learner, workers and shards;
`off_policy.OffPolicyLoop` / `on_policy.OnPolicyLoop` move data and hold the replay ratio; the driver only
ever holds counts, metrics and object refs, never sample data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distracer.algos import spec
from distracer.atomic import fsync_dir
from distracer.checkpoint import (
    Checkpoint,
    check_writable_dir,
    list_checkpoints,
    load_checkpoint,
    remove_unfinished_writes,
    save_checkpoint,
)
from distracer.config import TrainConfig, config_from_dict
from distracer.envs import env_spaces
from distracer.errors import ConfigError, StopNow, StoppedWithoutFinal
from distracer.evaluate import EvalResult, default_workers, evaluate_policy
from distracer.ray_setup import check_fit, init_ray, joins_cluster, learner_gpus
from distracer.runtime.actors import RunActors, actor_resources, bundle_layout
from distracer.runtime.logger import BusyMeter, RunLogger
from distracer.runtime.off_policy import OffPolicyLoop
from distracer.runtime.on_policy import OnPolicyLoop
from distracer.runtime.report import Counters, RunReport
from distracer.runtime.selection import Selection, keep_as_best, select
from distracer.runtime.worker import CollectStats
from distracer.runtime.worker_deaths import PART_DIED, WorkerDeaths

# The env switch's new workers take tracks of their own: a worker seed salt that no resume count reaches.
ENV_SWITCH_SALT = 1_000_000

Reporter = Callable[[RunReport], None]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1")
                     if hasattr(signal, name))
"""What the driver takes as "stop after a final checkpoint": Ctrl-C, what schedulers and `ray job stop` send
(SIGTERM), a closed terminal or SSH session (SIGHUP), and Slurm's `--signal` warning of preemption (SIGUSR1)."""

__all__ = ["Counters", "Driver", "Reporter", "RunReport", "bundle_layout", "train"]


@ray.remote(num_cpus=0)
def _evaluate_remote(weights, env_config, seeds) -> EvalResult:
    # num_cpus=0: evaluation is periodic and light next to training, and must never wait for a CPU
    # that the workers hold (it would deadlock a run that fills its placement group).
    return evaluate_policy(weights, env_config, seeds)


class Driver:
    """One training run. `run()` returns the final summary; safe to call from a Tune trainable.

    `reporter` is called with a `RunReport` after each evaluation and each checkpoint."""

    def __init__(self, config: TrainConfig, resume: str | Path | Checkpoint | None = None,
                 reporter: Reporter | None = None, handle_signals: bool = True, in_trial: bool = False):
        """`resume`: a checkpoint (or run) directory, or a `Checkpoint` already loaded (`--resume auto`).
        `in_trial`: a `distracer tune` trial, whose placement group (`bundle_layout`) already holds the run's
        resources; each actor is pinned to its bundle."""
        self.config = config
        self.reporter = reporter
        self.handle_signals = handle_signals
        self.in_trial = in_trial
        self.final_report: RunReport | None = None
        self.off_policy = spec(config.algo).off_policy
        self.switched = False  # env_switch applied (the workers train under its rules)
        self.counters = self._fresh_counters()
        self.checkpoint = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume) if resume else None
        if self.checkpoint is not None:
            self._check_resume_compatible()
        self.run_dir = check_writable_dir(config.run_dir)  # before Ray and any actor
        # Temporary directories of writes a killed run left behind (never sealed, never read).
        self.removed_tmp = [p for d in ("checkpoints", "best") for p in remove_unfinished_writes(self.run_dir / d)]
        self.stop_requested = threading.Event()
        self.started_ray = False
        self.actors: RunActors | None = None
        self.capacity = 0  # transitions per replay shard (off-policy), from replay.ram_budget
        self.logger: RunLogger | None = None
        self.deaths = WorkerDeaths(self._on_worker_death)
        self.weights_ref: ray.ObjectRef | None = None
        self.ratio_base = (0, 0)  # (updates, env steps) the replay ratio counts from (off_policy.allowed_updates)
        self.last_metrics: dict[str, float] = {}
        self.start_time = time.time()
        self.training_ended_at: float | None = None
        self._fill: tuple[float, float | None] = (0.0, None)  # (when read, replay fill): read at most every 5 s
        # Evaluation: the one in flight, and the learner state + counters at its weights (for run_dir/best).
        self.eval_ref: ray.ObjectRef | None = None
        self.eval_state: tuple[ray.ObjectRef, dict[str, Any]] | None = None
        self.eval_started_at = -1
        # Checkpoints: the newest, what it held (to skip identical ones), the next timed one, the best.
        self.last_checkpoint: Path | None = None
        self._saved_progress: tuple | None = None
        self.next_timed_checkpoint: float | None = None  # seconds since start (checkpoint.every_minutes)
        self.best_checkpoint: Path | None = None
        self.selection: Selection | None = None
        self._saved_step: tuple[int, int] | None = None  # (env steps, updates) of this process's newest checkpoint
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
        saved_env = config_from_dict(saved["config"]).env.acting_fields()
        asked = self.config.env.acting_fields()
        differ = [k for k in asked if saved_env.get(k) != asked[k]]
        if differ:
            raise ConfigError(f"checkpoint {str(self.checkpoint.path)!r} was trained with "
                              f"{', '.join(f'env.{k}={saved_env.get(k)!r}' for k in differ)}; the config asks for "
                              f"{', '.join(f'env.{k}={asked[k]!r}' for k in differ)} (what the policy sees and does "
                              "cannot change on resume)")
        self.counters = Counters.from_dict(saved["counters"])
        self.counters.resumes += 1

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
        self.start_time = time.time() - self.counters.wall_seconds  # (set again once Ray and the actors are up)
        if self._switch_due():  # a run resumed past its env switch starts under the new rules
            self._apply_switch()
        cfg = self.config
        self.started_ray = init_ray(cfg.resources)
        gpus = learner_gpus(cfg.resources)  # refuses a GPU the cluster lacks, before any actor starts
        if not self.in_trial:  # a Tune trial's placement group already holds its resources
            asked, what = actor_resources(cfg, gpus)
            check_fit(asked, what, cfg.resources.fit_timeout_s,
                      embedded=self.started_ray and not joins_cluster(cfg.resources))
        self.actors = RunActors(cfg, *env_spaces(cfg.env), gpus, pin_to_trial_bundles=self.in_trial)
        self.capacity = self.actors.replay_capacity()  # ConfigError for an impossible budget, before any actor
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
        self.logger = RunLogger(self.run_dir, cfg, start_steps=self.counters.env_steps,
                                start_updates=self.counters.num_updates)
        self.busy = BusyMeter(cfg.resources.num_workers)
        self._set_aside_newer_checkpoints()
        if self.switched:
            self.logger.info(f"distracer: resumed past its env switch: the rollout workers train with "
                             f"{self._switch_changes()} (env_switch)")
        if self.removed_tmp:
            self.logger.info(f"distracer: removed {len(self.removed_tmp)} unfinished checkpoint write(s) of a killed "
                             f"run: {', '.join(p.name for p in self.removed_tmp)}")
        if self.checkpoint is not None:  # a resumed run still owns its best so far
            self.best_checkpoint = ([None] + list_checkpoints(self.run_dir / "best"))[-1]
        if self.checkpoint is not None and self.off_policy and self.checkpoint.replay_dir is None:
            # (Checkpoints in best/ never hold one; checkpoint.save_replay adds it to the others.)
            self.logger.info(f"distracer: {self.checkpoint.path.name} holds no replay: collecting "
                             f"{cfg.algo_config.learning_starts:,} agent steps into an empty replay before updating "
                             "again (checkpoint.save_replay keeps the replay with each checkpoint)")
        self._start_actors()

    def _start_actors(self) -> None:
        """Shards (restored from the checkpoint's replay, if any), learner (from its state), workers; then
        the first weights. Also how a recovery rebuilds the run after a part died."""
        ckpt = self.checkpoint
        replay_dir = ckpt.replay_dir if ckpt is not None else None
        self.actors.start(self.capacity, ckpt.learner_state if ckpt else None, replay_dir, self.counters.resumes)
        self.publish()
        # A resume without its replay refills it before updating again: the ratio counts from the resume point.
        self.ratio_base = (self.counters.num_updates, self.counters.env_steps) if ckpt and not replay_dir else (0, 0)

    # ------------------------------------------------------------------ what the loops call
    def publish(self) -> None:
        """Put the learner's newest weights in the object store (one ref for every worker) and bump the version."""
        [self.weights_ref] = ray.get(self.actors.learner.publish.remote())
        self.counters.weights_version += 1

    def record_updates(self, metrics: dict[str, float]) -> None:
        """Take the learner's counter and newest metrics from the result of a train call."""
        self.counters.num_updates = int(metrics.pop("num_updates"))
        self.busy.learner_total_now(metrics.pop("update_seconds"))
        self.last_metrics = metrics

    def count(self, stats: CollectStats) -> None:
        """Count a worker's steps and finished episodes."""
        c = self.counters
        c.env_steps += stats.env_steps
        c.episodes += len(stats.episode_returns)
        self.busy.add_collect(stats.seconds)
        for ret, length, end in zip(stats.episode_returns, stats.episode_lengths, stats.episode_ends):
            c.recent_returns = (c.recent_returns + [ret])[-20:]
            self.logger.episode(ret, length, end, c.env_steps)

    def _on_worker_death(self, index: int) -> None:
        if self.stop_requested.is_set():
            self.logger.info(f"distracer: rollout worker {index} died while the run was stopping")
        else:
            self.logger.info(f"distracer: rollout worker {index} died; Ray restarts it and training goes on")
        self.counters.worker_restarts += 1
        self.logger.scalar("system/worker_restarts", self.counters.worker_restarts, self.counters.env_steps)

    def budget_used(self) -> float:
        """The fraction of `max_minutes` spent so far (wall-clock since the run began, across resumes); 0 without a
        time budget."""
        minutes = self.config.max_minutes
        return (time.time() - self.start_time) / (minutes * 60) if minutes else 0.0

    def time_left(self) -> float:
        """Seconds of `max_minutes` left (inf without a time budget): the progress line's ETA."""
        minutes = self.config.max_minutes
        return max(0.0, (1.0 - self.budget_used()) * minutes * 60) if minutes else math.inf

    def budget_position(self) -> float:
        """How far the run is through its budget: the further along of `budget_used()` and env steps /
        `total_env_steps` (1 or more once it is spent); what `env_switch.at_budget` is measured in."""
        return max(self.budget_used(), self.counters.env_steps / self.config.total_env_steps)

    def _switch_due(self) -> bool:
        at = self.config.env_switch.at_budget
        return bool(at) and not self.switched and self.budget_position() >= at

    def done(self) -> bool:
        """True when the algorithm's loop should return: the run is over, or its env switch is due."""
        return self._finished() or self._switch_due()

    def _finished(self) -> bool:
        cfg = self.config
        if self.stop_requested.is_set():
            return True
        if self.budget_used() > 1.0:
            self.logger.info("distracer: time budget reached")
            return True
        return self.counters.env_steps >= cfg.total_env_steps

    def periodic(self, drain: Callable[[], None] | None = None) -> None:
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
        self.logger.progress(c, self.last_metrics, self._replay_fill(), self.time_left())
        self.logger.busy(self.busy, c.env_steps)

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
            self._train()
            # Training time ends here; the closing evaluation is not part of it (benchmarks plot against it).
            self.training_ended_at = time.time()
            self.logger.busy(self.busy, self.counters.env_steps, force=True)
            try:
                self._finish_eval(block=True)
                self._evaluate_now_if_needed()
                self._save()
            except PART_DIED as exc:
                if self.stop_requested.is_set():
                    raise StoppedWithoutFinal(self._stopped_line(exc)) from None
                raise ConfigError(f"{self._died_line(exc)} while the run was ending; its training is done; the newest "
                                  f"checkpoint is {self.recovery_point or 'none'}") from None
            placement = self.actors.placement()
            self._select_best()
            self.final_report = self._report("final")
            summary = self.final_report.to_dict()
            summary["placement"] = placement
            if self.selection is not None:
                summary["selection"] = self.selection.to_dict()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            return summary
        finally:
            self._teardown()
            self._restore_signal_handlers(previous)

    def _train(self) -> None:
        """The algorithm's loop until done, rebuilding the run each time a part dies (up to max_recoveries)."""
        died: BaseException | None = None
        while True:
            try:
                if died is not None:  # inside the try: a part that dies during the rebuild is one more death
                    self._recover(died)
                    died = None
                (OffPolicyLoop(self) if self.off_policy else OnPolicyLoop(self)).run()
                if self.stop_requested.is_set() or not self._switch_due():
                    return
                self._switch_env()
            except PART_DIED as exc:
                if self.stop_requested.is_set():  # a run asked to stop is never rebuilt
                    raise StoppedWithoutFinal(self._stopped_line(exc)) from None
                died = exc

    # ----- the env switch
    def _apply_switch(self) -> None:
        self.config = dataclasses.replace(self.config, env=self.config.env_switch.switched(self.config.env))
        self.switched = True

    def _switch_changes(self) -> str:
        return ", ".join(f"env.{k}={v}" for k, v in self.config.env_switch.env.items())

    def _switch_env(self) -> None:
        """`env_switch`: a checkpoint first (a resume from it switches too), then new rollout workers under the
        new rules. The learner, its optimiser and the replay go on as they are."""
        self._save()
        self._apply_switch()
        self.logger.info(f"distracer: {self.budget_position():.0%} of the budget spent: the rollout workers now "
                         f"train with {self._switch_changes()} (env_switch)")
        self.actors.replace_workers(self.config, ENV_SWITCH_SALT + self.counters.resumes)

    # ----- recovery
    def _died_line(self, exc: BaseException) -> str:
        dead = self.actors.dead_parts() or [f"a part of the run ({type(exc).__name__})"]
        return f"{' and '.join(dead)} died"

    def _stopped_line(self, exc: BaseException) -> str:
        return (f"stopped as asked, but {self._died_line(exc)} with the stop signal (a scheduler that signals every "
                f"process of the job: docs/RELIABILITY.md), so no final checkpoint; the newest is "
                f"{self.recovery_point or 'none'}; --resume auto continues from it")

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
        self.actors.kill()
        self.deaths.clear()
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
        self.last_checkpoint, self._saved_progress, self._saved_step = point, None, None
        self.eval_ref = self.eval_state = None
        self.eval_started_at = -1
        self.logger.scalar("system/recoveries", self.counters.recoveries, self.counters.env_steps)
        self.logger.restart_rates(self.counters.env_steps, self.counters.num_updates)
        self._start_actors()

    # ------------------------------------------------------------------ evaluation
    def _eval_seeds(self) -> list[int]:
        start = self.config.eval.seed + 1000 * self.counters.weights_version
        return list(range(start, start + self.config.eval.episodes))

    def _start_eval(self) -> None:
        self.eval_started_at = self.counters.env_steps
        if self.config.checkpoint.keep_best:
            # The learner's state at exactly the evaluated weights: publish (after any update in flight), then
            # ask for the state; the actor runs calls in order and no update is sent in between.
            self.publish()
            self.eval_state = (self.actors.learner.state_dict.remote(), copy.deepcopy(self.counters.__dict__))
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
            self.reporter(self._report("evaluation"))

    def _evaluate_now_if_needed(self) -> None:
        """A run always ends with an evaluation of its final weights (unless one just ran on them)."""
        if self.eval_started_at == self.counters.env_steps:
            return
        self._start_eval()
        self._finish_eval(block=True)

    def _replay_fill(self) -> float | None:
        if self.off_policy and time.time() - self._fill[0] > 5:
            self._fill = (time.time(), self.actors.replay_fill())
        return self._fill[1]

    # ------------------------------------------------------------------ checkpoints
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

    def _checkpoint_state(self, counters: dict[str, Any]) -> dict[str, Any]:
        return {"algo": self.config.algo, "config": self.config.to_dict(), "counters": counters}

    def _save(self) -> Path:
        c = self.counters
        progress = (c.env_steps, c.num_updates, c.last_eval, c.episodes)
        if self.last_checkpoint is not None and progress == self._saved_progress:
            return self.last_checkpoint  # nothing new since the last one
        self._saved_progress = progress
        c.wall_seconds = (self.training_ended_at or time.time()) - self.start_time
        learner_state = ray.get(self.actors.learner.state_dict.remote())
        write_replay = self.actors.save_replay if self.config.checkpoint.save_replay and self.off_policy else None
        same_step = self.last_checkpoint if self._saved_step == (c.env_steps, c.num_updates) else None
        self.last_checkpoint = save_checkpoint(self.run_dir / "checkpoints", learner_state,
                                               self._checkpoint_state(dict(c.__dict__)), c.env_steps, write_replay,
                                               keep=self.config.checkpoint.keep)
        self._saved_step = (c.env_steps, c.num_updates)
        if same_step is not None and same_step != self.last_checkpoint:
            # The same weights again with newer counters (the closing evaluation's score): one checkpoint a step,
            # under the step's own name. The new one is sealed before the old one goes.
            shutil.rmtree(same_step, ignore_errors=True)
            os.replace(self.last_checkpoint, same_step)
            fsync_dir(same_step.parent)
            self.last_checkpoint = same_step
        self.recovery_point = self.last_checkpoint
        self.logger.info(f"distracer: checkpoint {self.last_checkpoint}")
        if self.reporter is not None:
            self.reporter(self._report("checkpoint"))
        return self.last_checkpoint

    def _save_best(self, result: EvalResult) -> None:
        """Keep the evaluated weights of the best evaluation so far as `run_dir/best/ckpt_*` (one checkpoint,
        the same format): what a run that peaked and then slid back still has to show for itself."""
        state_ref, counters = self.eval_state
        counters = {**counters, "last_eval": result.mean, "last_eval_std": result.std,
                    "best_eval": max(self.counters.best_eval, result.mean)}
        state = {**self._checkpoint_state(counters),
                 "evaluation": {"mean": result.mean, "std": result.std, "returns": result.returns,
                                "seeds": result.seeds}}
        best = save_checkpoint(self.run_dir / "best", ray.get(state_ref), state, counters["env_steps"])
        for other in list_checkpoints(self.run_dir / "best"):  # sealed before the older one goes
            if other != best:
                shutil.rmtree(other, ignore_errors=True)
        self.best_checkpoint = best
        self.logger.info(f"distracer: new best evaluation {result.mean:.1f}; kept as {self.best_checkpoint}")

    def _select_best(self) -> None:
        """The final selection (`runtime.selection`): what run_dir/best holds when the run ends."""
        e = self.config.eval
        if not e.select_episodes or not self.config.checkpoint.keep_best or self.in_trial:
            return
        if self.stop_requested.is_set():
            self.logger.info("distracer: stopped before the end, so no final selection; run_dir/best holds the "
                             "best periodic evaluation")
            return
        self.actors.kill()  # training is over: the selection's episodes get its cores
        try:
            selection = select(self.run_dir, e.seed, e.select_episodes, e.select_last, default_workers(),
                               self.logger.info)
            self.best_checkpoint = keep_as_best(self.run_dir, selection)
        except Exception as exc:  # the training and its checkpoints are saved; a failed pick must not undo that
            self.logger.info(f"distracer: the final selection failed ({type(exc).__name__}: {exc}); run_dir/best "
                             f"holds the best periodic evaluation")
            return
        self.selection = selection
        self.logger.info(f"distracer: recommended: {self.best_checkpoint} (the {selection.best.label})")

    # ------------------------------------------------------------------ reports
    def _report(self, kind: str) -> RunReport:
        c = self.counters
        elapsed = max(1e-9, time.time() - self.start_time)
        learning_starts = self.config.algo_config.learning_starts if self.off_policy else 0
        return RunReport(
            kind=kind, env_steps=c.env_steps, num_updates=c.num_updates, episodes=c.episodes,
            weights_version=c.weights_version, worker_restarts=c.worker_restarts, recoveries=c.recoveries,
            eval_return_mean=c.last_eval, eval_return_std=c.last_eval_std, best_eval_return=c.best_eval,
            episode_return_mean=float(np.mean(c.recent_returns)) if c.recent_returns else float("nan"),
            env_steps_per_s=c.env_steps / elapsed, wall_seconds=elapsed,
            replay_ratio=c.num_updates / max(1, c.env_steps - learning_starts),
            learner=dict(self.last_metrics),
            checkpoint=str(self.last_checkpoint) if self.last_checkpoint is not None else None,
            best_checkpoint=str(self.best_checkpoint) if self.best_checkpoint is not None else None)

    # ------------------------------------------------------------------ shutdown
    def _install_signal_handlers(self) -> dict:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def request_stop(signum, _frame):
            name = signal.Signals(signum).name
            if self.stop_requested.is_set():  # the second: at once, leaving the sealed checkpoints as they are
                raise StopNow(f"{name} received again, so stopped at once; the newest checkpoint is "
                              f"{self.recovery_point or 'none'}", signum)
            self.logger.info(f"distracer: {name} received; stopping after a final checkpoint (again: at once)")
            self.stop_requested.set()

        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, request_stop)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _teardown(self) -> None:
        if self.actors is not None:
            self.actors.kill()
        if self.logger is not None:
            self.logger.close()
        if self.started_ray:
            ray.shutdown()


def train(config: TrainConfig, resume: str | Path | Checkpoint | None = None, reporter: Reporter | None = None,
          handle_signals: bool = True) -> dict[str, Any]:
    """Train with `config`; resume from a checkpoint (or a run dir's newest one) when given. Returns the
    summary (`RunReport.to_dict()` of the final report, plus where each actor ran)."""
    return Driver(config, resume, reporter, handle_signals).run()
