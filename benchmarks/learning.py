"""Learning benchmark: score on the stock CarRacing-v3 against wall-clock time, for training recipes on this machine.

What it measures. Each *recipe* (a row of RECIPES: distracer config files plus overrides, or the peer,
Stable-Baselines3 PPO with RL Zoo's CarRacing-v3 hyperparameters) trains for a fixed wall-clock budget
(`--minutes`) once per training seed, and leaves a snapshot every `--interval` minutes of training
wall-clock. After all training has finished (so evaluation never takes CPU from a run), every snapshot is
scored on the stock `CarRacing-v3` with a deterministic policy over the same `--episodes` evaluation
seeds (EVAL_SEED, EVAL_SEED+1, ...; training seeds are all below 1,000,000); the score is the unmodified
CarRacing episode return. The result is a learning curve per recipe: score against training minutes and
against env frames (agent steps x action repeat).

How it runs.
- distracer recipes run the real CLI in a subprocess: `python -m distracer train --config ... --set
  max_minutes=M --set checkpoint.every_minutes=I --set checkpoint.keep=1000 --set eval.every_env_steps=0`;
  the snapshots are its checkpoints (`state.json` counters: env_steps = agent steps, wall_seconds =
  training wall-clock since the driver's setup finished). The driver also writes its step-based
  checkpoints and a final one (after its closing evaluation); all are scored.
- the peer runs in a subprocess of its own (this file with --train-peer): RL Zoo's env pipeline (8
  DummyVecEnv envs of the stock env, Monitor, FrameSkip(2) summing rewards, 64x64, grayscale, VecNormalize
  of rewards only, a 2-frame VecFrameStack) and PPO hyperparameters; the learning rate decays linearly
  over RL Zoo's 4M steps, whatever the budget. A callback saves the model every --interval minutes of
  wall-clock since `learn()` started, with a sidecar JSON of agent steps and wall seconds.
- default: runs one after another, each with the whole machine; `--pin`: runs side by side, each pinned
  (sched_setaffinity, inherited by its Ray processes) to a core of its own, in waves when there are more
  runs than cores. Pinned runs each get one core's worth of compute: compare recipes within one mode.
- evaluation: episodes as tasks of a spawn multiprocessing pool of `--eval-workers` processes (one torch
  thread each). distracer snapshots through `distracer.evaluate` (load_for_evaluation + run_episode, the
  code of `distracer evaluate`; EVAL_SEED is its default first seed, so `distracer evaluate --checkpoint
  SNAPSHOT --episodes N` reproduces a row). The peer with its own training pipeline on the stock env
  (FrameSkip 2, 64x64, grayscale, 2-frame stack; reward normalisation plays no part in acting) and
  `model.predict(obs, deterministic=True)`; the return is the Monitor's, beneath every wrapper.

Outputs in --out: curves.csv, curves.png, summary.json, evals.json (every episode's return and length, by
snapshot), plan.json; per run <recipe>/seed<S>/ with train.log (the subprocess's whole output) and run.json
(exit status). A distracer run's last checkpoint is written after the driver's closing evaluation (one
episode here), but its wall_seconds is training time only: the driver stops that clock when training ends.

    python benchmarks/learning.py --recipe ppo --recipe sb3_ppo_zoo --seeds 1 2 --minutes 30 --interval 5
    python benchmarks/learning.py --eval-only runs/learning/20250101-120000 --episodes 20

`--eval-only DIR` scores every snapshot under DIR, reusing the scores DIR's evals.json holds for the same
snapshots on the same seeds (sealed checkpoints never change; scoring is deterministic). So a run extended with
`distracer train ... --set run_dir=DIR/<recipe>/seed<S> --set max_minutes=60 --resume auto` (max_minutes counts
the resumed run's training wall-clock too) is scored again at the cost of its new snapshots only. Runs of recipes
renamed or removed since are found by what they left (checkpoints/ or the peer's snapshots/).

The last line is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from _common import cpu_model, print_json_last

REPO = Path(__file__).resolve().parent.parent
PROG = "learning.py"
PEER = "sb3_ppo_zoo"
STOCK_ID = "CarRacing-v3"
TRAIN_SEED_LIMIT = 1_000_000
"""Training seeds (and the peer's per-env seeds S..S+7) stay below this: distracer's eval.seed."""
EVAL_SEED = 1_001_000_000
"""First evaluation seed: `distracer evaluate`'s default (eval.seed + 1e9), far from every training seed."""
MAX_TRAIN_SEED = TRAIN_SEED_LIMIT - 1000  # room for each run's per-env seeds (S, S+1, ...)
SETUP_GRACE_S = 900.0
"""A run is stopped (SIGTERM, then SIGKILL) this long after its budget: Ray start, final evaluation, shutdown."""
STOP_GRACE_S = 60.0
"""Seconds a SIGTERM'd run gets to write its final checkpoint before SIGKILL."""
LOG_TAIL_LINES = 15


# ----------------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    """One contender: distracer config files (relative to the repo) and overrides, or the SB3 peer."""

    configs: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    peer: bool = False


PPO_FILES = ("tune_configs/ppo.yaml", "tune_configs/cpu.yaml")
GSDE = ("ppo.use_sde=true", "ppo.log_std_init=-1.5", "ppo.accel_log_std_init=null")
"""gSDE as tune_configs/ppo.yaml had it until Gaussian noise replaced it: the recipes below measured with it keep it."""
GSDE_NARROW = ("ppo.use_sde=true", "ppo.log_std_init=-2.0", "ppo.accel_log_std_init=null")
"""gSDE as tune_configs/ppo.yaml had it before `log_std_init: -1.5` (commit 378a88a), for the recipes measured then."""
GAUSSIAN_STD = ("ppo.use_sde=false", "ppo.log_std_init=-2.0")
"""Independent Gaussian noise from std exp(-2), accel's std left to the config: GAUSSIAN and ACCEL_STD set it."""
GAUSSIAN = GAUSSIAN_STD + ("ppo.accel_log_std_init=null",)
"""ppo.yaml's noise from 81e5766 until accel's noise started smaller, pinned so the Gaussian recipes measure the same
thing as when they were measured."""
ACCEL_STD = GAUSSIAN_STD + ("ppo.accel_log_std_init=-3.0",)
"""The `ppo` default's noise since 2026-12-06: steering's std exp(-2), accel's exp(-3) (`ppo.accel_log_std_init`)."""
KL_STOP = ("ppo.target_kl=0.05",)
"""The cpu preset's KL early stop (`ppo.target_kl: 0.05`, on from 2bf759a until the default turned it off with
`ppo.accel_log_std_init: -3.0`): every recipe on PPO_FILES measured with it pins it."""
NO_SKIP = ("env.skip_penalty=0",)
"""ppo.yaml without its skip penalty, as every recipe measured before the penalty became its default pins it."""

RECIPES: dict[str, Recipe] = {
    "ppo": Recipe(PPO_FILES),
    "sac_drq": Recipe(("tune_configs/sac_drq.yaml", "tune_configs/cpu.yaml")),
    "dqn": Recipe(("tune_configs/dqn.yaml", "tune_configs/cpu.yaml")),
    "ppo_laptop": Recipe(("tune_configs/ppo.yaml", "tune_configs/laptop.yaml"),  # the old default
                         NO_SKIP + GSDE_NARROW),
    # The `ppo` recipe up to the commit that made Gaussian noise its default (docs/RESULTS.md: `ppo` before then;
    # `ppo_wide_std` before the standstill rule's runs were renamed).
    "ppo_gsde": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE),
    # Candidate: the `cpu` recipe with training episodes of a stopped car ended after 100 frames, -100 (the env's
    # own penalty for leaving the playfield). Scores stay stock returns.
    # (As measured, before the standstill rule.)
    "ppo_no_progress": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE_NARROW + ("env.no_progress_frames=100",
                                                           "env.no_progress_penalty=-100",
                                                           "env.standstill_frames=0")),
    # The `cpu` recipe as it was before `env.standstill_frames: 100` joined tune_configs/ppo.yaml (the runs in
    # docs/RESULTS.md called `ppo` up to commit 4187c9c; `ppo_standstill` there is today's `ppo_narrow_std`).
    "ppo_no_standstill": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE_NARROW + ("env.standstill_frames=0",)),
    # The gSDE recipe as it was before `ppo.log_std_init: -1.5` joined tune_configs/ppo.yaml: RL Zoo's -2 (the
    # runs in docs/RESULTS.md called `ppo` up to commit 552999d; `ppo_wide_std` there is `ppo_gsde`).
    "ppo_narrow_std": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE_NARROW),
    # `ppo_gsde` with its learning rate decayed to 0 over the run's time budget (--minutes) instead of over 600k
    # agent steps: does annealing to the budget, on a machine of any speed, give a better policy at the budget's end?
    "ppo_budget_lr": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE + ("ppo.lr_horizon=budget",)),
    # `ppo_budget_lr` in two phases (the standstill rule off for the last quarter of the budget, by `env_switch`) with
    # the skip penalty from the start: tune_configs/ppo_two_phase.yaml (gSDE, as measured), the long-budget recipe
    # users run. Its runs before that file existed passed `--set total_env_steps=5000000 --set env.skip_penalty=-20`.
    "ppo_two_phase": Recipe(("tune_configs/ppo_two_phase.yaml",)),  # extends ppo.yaml and cpu.yaml
    # `ppo_gsde` with the standstill rule off for the last quarter of its budget (`env_switch`, as in ppo_two_phase):
    # late in its runs the rule ended 17-30% of training episodes as the return fell (docs/RESULTS.md, seed 3), so
    # does training on whole episodes at the end keep the peak? The budget is the further along of --minutes and 600k.
    "ppo_late_whole": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE + ("env_switch.at_budget=0.75",
                                                          "env_switch.env.standstill_frames=0")),
    # `ppo_gsde` with rollouts of 256 steps per env (2,048 transitions) instead of 512: twice the updates per agent
    # step. On 2 cores the worker sets the pace (learner busy 33-49% in the first half, docs/RESULTS.md) and most
    # updates stop early at target_kl, so does updating twice as often learn more by 30 minutes?
    "ppo_short_rollout": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GSDE + ("ppo.num_steps=256",)),
    # `ppo_gsde` with independent Gaussian noise (std 0.135 per control) instead of gSDE: gSDE's action std is the
    # policy latent's norm times exp(log_std), and the latent's norm grew 0.42 -> 1.00 over the schedule while PPO
    # lowered log_std (0.21 -> 0.18): the std doubled (0.09 -> 0.18) against what the loss asked, as the score fell
    # at the schedule's end (docs/RESULTS.md). Here PPO sets the std itself. `ppo` since it held on 3 seeds.
    "ppo_gaussian": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GAUSSIAN),
    # `ppo_gaussian` with its learning rate decayed to 0 over the run's time budget (`ppo.lr_horizon=budget`): its 3
    # seeds rose from 30 minutes to the schedule's end (704.7 -> 828.9 mean, 600k agent steps, 45-47 minutes here)
    # as the rate fell, so does ending the decay at 30 minutes bring that rise into a 30-minute budget?
    "ppo_gaussian_budget_lr": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GAUSSIAN + ("ppo.lr_horizon=budget",)),
    # `ppo` (Gaussian noise) with the training-only skip penalty of ppo_two_phase (-20 once the car leaves tiles
    # unvisited behind it): its end checkpoints lost 12-18 points per episode over 100 to cut corners, laps that then
    # run to the time limit a few tiles short (docs/RESULTS.md). Scores stay stock returns. 3 seeds at 30 minutes:
    # 743.3 (704.7 without), so tune_configs/ppo.yaml trains with it since; `ppo` is this recipe now.
    "ppo_gaussian_skip": Recipe(PPO_FILES, KL_STOP + GAUSSIAN + ("env.skip_penalty=-20",)),
    # `ppo` (Gaussian noise) deciding every 4 frames, not 2. On 2 cores the worker sets the pace and spends ~75% of
    # its time drawing (a cProfile of collect_rollout, 8 envs: 3.6 of 4.8 s in `_render_state_pixels`, 3.5 ms per
    # agent step); the fast env draws only a repeat's last frame, so repeat 4 moves ~2x the frames per second at about
    # the same agent steps/s. Does the car then learn more per minute? (Its one earlier run, 2026-11-29, was the
    # pre-Zoo recipe whose std collapsed at any repeat.) 3 seeds at 30 minutes: 732.4, within `ppo_gaussian`'s spread.
    "ppo_gaussian_ar4": Recipe(PPO_FILES, KL_STOP + NO_SKIP + GAUSSIAN + ("env.action_repeat=4",)),
    # `ppo_gaussian` starting from std exp(-3) = 0.05, not 0.135: a policy trained at a smaller std is closer to the
    # deterministic one that is scored. Not run. (On `ppo_gaussian` checkpoints the noise was no steady part of the
    # score; on `ppo_gaussian_skip`'s it was, 853.0 noisy against 730.8; the falling ceiling, `ppo_std_decay`, failed.)
    "ppo_gaussian_low_std": Recipe(PPO_FILES, KL_STOP + NO_SKIP + ("ppo.use_sde=false", "ppo.log_std_init=-3.0",
                                                                   "ppo.accel_log_std_init=null")),
    # `ppo` (the skip-penalty default) with a ceiling on log_std falling from -2 to -3.5 (std 0.135 -> 0.03) over the
    # schedule: the deterministic 30-minute policy of `ppo_gaussian_skip` seed 1 drove faster than its noisy self
    # (max speed 85-90 against 77-78 on the same tracks) and spun out where the noisy one finished laps; at 30
    # minutes the ceiling is about -3.0 (std 0.05), so the controller trained late is nearer the one scored.
    # 3 seeds at 30 minutes: 722.8, below `ppo_gaussian_skip`'s 743.3 (docs/RESULTS.md): failed.
    "ppo_std_decay": Recipe(PPO_FILES, KL_STOP + GAUSSIAN + ("env.skip_penalty=-20", "ppo.log_std_final=-3.5")),
    # `ppo` (the skip-penalty default) with the accel control's noise started at std exp(-3) = 0.05, steering's at 0.135
    # (`ppo.accel_log_std_init`). Zero-mean noise on accel brakes more than it drives (the brake is several times the
    # gas at speed), so the noisy car coasts through corners slower than its mean action, the scored controller, which
    # spins out there (853.0 noisy against 730.8 by the mean). `ppo_std_decay` cut both controls' noise late and lost
    # training return; this keeps steering's exploration and makes the trained car the scored one. 3 seeds at 30
    # minutes: 874.3, 324.9, 889.1 = 696.1 (docs/RESULTS.md): seeds 1 and 3 the best 30-minute scores so far, seed 2
    # stalled at the KL early stop for its first 200k-300k agent steps.
    "ppo_accel_std": Recipe(PPO_FILES, KL_STOP + ACCEL_STD + ("env.skip_penalty=-20",)),
    # `ppo_accel_std` without the KL early stop (`ppo.target_kl=null`): the policy's KL over an accel mean step grows
    # as 1/std^2, 7.3x at std 0.05 against 0.135, and seed 2 of `ppo_accel_std` stopped every update at target_kl
    # after 1.2-1.7 of its 10 epochs for its first 200k agent steps, learning nothing (its seed 1, which did full
    # epochs from 100k on, scored 874.3 at 30 minutes). 3 seeds at 30 minutes: 864.1, 725.5, 864.2 = 817.9 (the
    # default then, `ppo_gaussian_skip`: 743.3), so it is the `ppo` default since: tune_configs/ppo.yaml sets
    # accel's std, cpu.yaml's target_kl is off. Pinned here, so it stays what was measured if the default moves.
    "ppo_accel_std_no_kl": Recipe(PPO_FILES, ACCEL_STD + ("env.skip_penalty=-20", "ppo.target_kl=null")),
    # `ppo_two_phase` (tune_configs/ppo_two_phase.yaml: lr to 0 over the budget, the standstill rule off for its last
    # quarter) with the `ppo` default's noise and no KL early stop (`ppo_accel_std_no_kl`, 817.9 over 3 seeds at 30
    # minutes) in place of gSDE and target_kl 0.05: does the default's noise carry the long-budget recipe to 900?
    # Seed 1, 60 minutes: 814.3 at 15, 730.8 at 30, 762.2 at 60, below the default's seed 1: failed (the rate, high
    # for longer, moved the policy far without the KL guard: clip_fraction 0.41-0.44; docs/RESULTS.md).
    "ppo_two_phase_accel_std": Recipe(("tune_configs/ppo_two_phase.yaml",), ACCEL_STD + ("ppo.target_kl=null",)),
    # `ppo_gsde` with gSDE on the unit-norm latent (`ppo.sde_unit_latent`): the noise stays smooth and state-dependent,
    # its size is exp(log_std) alone (0.1 at the start, ppo_gsde's from 100k to 470k agent steps), set by the loss.
    "ppo_sde_unit": Recipe(PPO_FILES, KL_STOP + NO_SKIP + ("ppo.use_sde=true", "ppo.sde_unit_latent=true",
                                                           "ppo.log_std_init=-2.3", "ppo.accel_log_std_init=null")),
    # The `ppo` default with CarRacing's own lap rule for training episodes (`env.lap_end_fraction=0.95`): a lap
    # driven with tiles missed ends at the start line instead of running on to frame 1,000 (LapEndTermination).
    # Seed 1, to the schedule's end (56 min, the slower Xeon host): 810.6 over 100 against the default's 843.8-859.6;
    # the rule fired on 5% of late training episodes: failed (docs/RESULTS.md).
    "ppo_lap_end": Recipe(PPO_FILES, ("env.lap_end_fraction=0.95",)),
    PEER: Recipe(peer=True),
}
DEFAULT_RECIPES = ("ppo", PEER)


def _num(x: float) -> str:
    """30.0 -> '30', 0.5 -> '0.5': how a number reads on a command line."""
    return f"{x:g}"


def distracer_command(recipe: Recipe, seed: int, run_dir: Path, minutes: float, interval: float,
                      extra: Iterable[str] = ()) -> list[str]:
    """The `distracer train` command line of one run (run from the repo root); minutes of wall-clock."""
    cmd = [sys.executable, "-m", "distracer", "train"]
    for config in recipe.configs:
        cmd += ["--config", config]
    overrides = [f"seed={seed}", f"run_dir={run_dir}", f"max_minutes={_num(minutes)}",
                 f"checkpoint.every_minutes={_num(interval)}", "checkpoint.keep=1000", "eval.every_env_steps=0",
                 # Snapshots on the wall-clock grid only (each costs --episodes stock episodes to score).
                 "checkpoint.every_env_steps=1000000000",
                 # The run's own closing evaluation is not used here (snapshots are scored afterwards): keep it short.
                 "eval.episodes=1", *recipe.overrides, *extra]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def peer_command(seed: int, run_dir: Path, minutes: float, interval: float, threads: int) -> list[str]:
    """This file in a subprocess of its own, training the peer; minutes of wall-clock."""
    spec = {"seed": seed, "run_dir": str(run_dir), "minutes": minutes, "interval": interval, "threads": threads}
    return [sys.executable, str(Path(__file__).resolve()), "--train-peer", json.dumps(spec)]


def run_command(name: str, seed: int, run_dir: Path, minutes: float, interval: float, extra: Iterable[str],
                threads: int) -> list[str]:
    recipe = RECIPES[name]
    if recipe.peer:
        return peer_command(seed, run_dir, minutes, interval, threads)
    return distracer_command(recipe, seed, run_dir, minutes, interval, extra)


# ----------------------------------------------------------------------------------------------------
# Arguments


class UsageError(Exception):
    """Bad arguments: one line on stderr, exit status 2, before anything starts."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line too, no usage block
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--recipe", action="append", default=None, metavar="NAME",
                   help=f"recipe to train (repeatable): {', '.join(RECIPES)}; default: {' + '.join(DEFAULT_RECIPES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], metavar="S", help="training seeds (default: 1)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock training budget per run, minutes")
    p.add_argument("--interval", type=float, default=5.0, help="minutes of training wall-clock between snapshots")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per snapshot")
    p.add_argument("--out", default=None, metavar="DIR", help="output dir (default runs/learning/<timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra distracer config override for the distracer recipes (repeatable)")
    p.add_argument("--pin", action="store_true",
                   help="run side by side, each pinned to a core of its own (default: one after another)")
    p.add_argument("--eval-only", default=None, metavar="DIR",
                   help="re-evaluate the snapshots of an existing output dir; no training")
    p.add_argument("--eval-workers", type=int, default=None, metavar="N",
                   help="evaluation processes (default: the CPUs this process may use)")
    p.add_argument("--train-peer", default=None, help=argparse.SUPPRESS)  # internal: the peer's subprocess
    return p


def usable_cpus() -> list[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass
class Plan:
    """Validated arguments."""

    recipes: list[str]
    seeds: list[int]
    minutes: float
    interval: float
    episodes: int
    out: Path
    overrides: list[str]
    pin: bool
    eval_only: Path | None
    eval_workers: int
    recipes_given: bool = True
    """False when --recipe was not given: --eval-only then takes every recipe it finds."""


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def make_plan(args: argparse.Namespace) -> Plan:
    """Check every argument (cheap checks first); raises UsageError with one line."""
    recipes = _unique(args.recipe or DEFAULT_RECIPES)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise UsageError(f"unknown recipe {unknown[0]!r}; allowed: {', '.join(RECIPES)}")
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise UsageError(f"--minutes {_num(args.minutes)} must be > 0")
    if not (math.isfinite(args.interval) and args.interval > 0):
        raise UsageError(f"--interval {_num(args.interval)} must be > 0")
    if args.interval > args.minutes:
        raise UsageError(f"--interval {_num(args.interval)} is longer than --minutes {_num(args.minutes)}")
    if args.episodes < 1:
        raise UsageError(f"--episodes {args.episodes} must be >= 1")
    if args.eval_workers is not None and args.eval_workers < 1:
        raise UsageError(f"--eval-workers {args.eval_workers} must be >= 1")
    seeds = _unique(args.seeds)
    bad = [s for s in seeds if not 0 <= s <= MAX_TRAIN_SEED]
    if bad:
        raise UsageError(f"--seeds {bad[0]} is out of range: training seeds must be in [0, {MAX_TRAIN_SEED}] "
                         f"(evaluation seeds start at {EVAL_SEED:,})")
    bad_sets = [o for o in args.overrides if "=" not in o]
    if bad_sets:
        raise UsageError(f"--set {bad_sets[0]!r} must look like key.path=value")
    eval_only = Path(args.eval_only).resolve() if args.eval_only else None
    if eval_only is not None and not eval_only.is_dir():
        raise UsageError(f"--eval-only {args.eval_only!r} is not a directory")
    if args.out:
        out = Path(args.out).resolve()
    elif eval_only is not None:
        out = eval_only
    else:
        out = (Path("runs/learning") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if eval_only is None and (out / "curves.csv").exists():
        raise UsageError(f"--out {str(out)!r} already holds curves.csv; choose another dir (or use --eval-only)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file")
    plan = Plan(recipes, seeds, float(args.minutes), float(args.interval), args.episodes, out, list(args.overrides),
                args.pin, eval_only, args.eval_workers or len(usable_cpus()), args.recipe is not None)
    if eval_only is None:
        check_distracer_configs(plan)
    return plan


def check_distracer_configs(plan: Plan) -> None:
    """Load each distracer recipe's config with every override, as `distracer train` will, before any run."""
    from distracer.config import load_config
    from distracer.errors import ConfigError

    for name in plan.recipes:
        recipe = RECIPES[name]
        if recipe.peer:
            continue
        cmd = distracer_command(recipe, plan.seeds[0], plan.out / name / f"seed{plan.seeds[0]}", plan.minutes,
                                plan.interval, plan.overrides)
        overrides = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
        try:
            load_config([str(REPO / c) for c in recipe.configs], overrides)
        except ConfigError as exc:
            raise UsageError(f"recipe {name}: {exc}") from None


# ----------------------------------------------------------------------------------------------------
# The peer: Stable-Baselines3 PPO with RL Zoo's CarRacing-v3 settings (hyperparams/ppo.yml)

PEER_N_ENVS = 8
PEER_FRAME_SKIP = 2
PEER_FRAME_SIZE = 64
PEER_FRAME_STACK = 2
ZOO_N_TIMESTEPS = 4_000_000  # RL Zoo's n_timesteps: the horizon of its linear learning-rate schedule
ZOO_LR = 1e-4
ZOO_PPO = {"n_steps": 512, "batch_size": 128, "n_epochs": 10, "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2,
           "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5, "use_sde": True, "sde_sample_freq": 4}


class FrameSkip(gym.Wrapper):
    """RL Zoo's `FrameSkip`: apply each action `skip` times, sum the rewards, stop early when an episode ends."""

    def __init__(self, env: gym.Env, skip: int = PEER_FRAME_SKIP):
        super().__init__(env)
        self._skip = skip

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        total = 0.0
        for _ in range(self._skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def zoo_wrappers(env: gym.Env) -> gym.Env:
    """RL Zoo's env_wrapper list for CarRacing-v3, in its order (above SB3's Monitor)."""
    from gymnasium.wrappers import GrayscaleObservation, ResizeObservation

    env = FrameSkip(env, PEER_FRAME_SKIP)
    env = ResizeObservation(env, (PEER_FRAME_SIZE, PEER_FRAME_SIZE))
    return GrayscaleObservation(env, keep_dim=True)


def make_stock_env() -> gym.Env:
    """The stock env exactly as RL Zoo makes it (`spec.make()`: continuous, no render mode)."""
    return gym.make(STOCK_ID)


def peer_vec_env(n_envs: int, seed: int) -> Any:
    """DummyVecEnv of n stock envs (seeds seed..seed+n-1 on the first reset), Monitor innermost, Zoo's wrappers."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    return make_vec_env(make_stock_env, n_envs=n_envs, seed=seed, wrapper_class=zoo_wrappers,
                        vec_env_cls=DummyVecEnv)


class LinearSchedule:
    """RL Zoo's `lin_<x>`: the learning rate as progress_remaining x initial (1 at the start, 0 at the end)."""

    def __init__(self, initial: float):
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial


def build_peer(seed: int) -> Any:
    """SB3 PPO on the training envs: 8 envs, VecNormalize (rewards only), VecFrameStack(2), Zoo's hyperparameters."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize
    from torch import nn

    venv = peer_vec_env(PEER_N_ENVS, seed)
    # RL Zoo's order: normalisation wraps the vec env, the frame stack goes on top (norm_obs=False either way).
    venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=ZOO_PPO["gamma"])
    venv = VecFrameStack(venv, n_stack=PEER_FRAME_STACK)
    policy_kwargs = {"log_std_init": -2, "ortho_init": False, "activation_fn": nn.GELU,
                     "net_arch": {"pi": [256], "vf": [256]}}
    return PPO("CnnPolicy", venv, learning_rate=LinearSchedule(ZOO_LR), policy_kwargs=policy_kwargs, seed=seed,
               device="cpu", verbose=1, **ZOO_PPO)


def snapshot_name(agent_steps: int) -> str:
    return f"step_{agent_steps:012d}"


def write_peer_snapshot(model: Any, snap_dir: Path, agent_steps: int, wall_seconds: float,
                        process_seconds: float) -> Path:
    """The model zip and its sidecar JSON (written last: a zip without one is not a snapshot)."""
    snap_dir.mkdir(parents=True, exist_ok=True)
    base = snap_dir / snapshot_name(agent_steps)
    model.save(str(base) + ".zip")
    sidecar = {"agent_steps": agent_steps, "wall_seconds": wall_seconds, "process_seconds": process_seconds,
               "action_repeat": PEER_FRAME_SKIP, "env_frames": agent_steps * PEER_FRAME_SKIP}
    tmp = base.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sidecar))
    os.replace(tmp, base.with_suffix(".json"))
    return base


def snapshot_callback(snap_dir: Path, minutes: float, interval: float, process_start: float) -> Any:
    """An SB3 callback: a snapshot every `interval` minutes of wall-clock since learn() began; stops at `minutes`."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Snapshots(BaseCallback):
        def _on_training_start(self) -> None:
            self.start = time.time()
            self.next_snapshot = 60 * interval
            self.next_print = 30.0
            self.saved_at = -1

        def save(self, elapsed: float) -> None:
            steps = int(self.model.num_timesteps)
            if steps != self.saved_at:
                write_peer_snapshot(self.model, snap_dir, steps, elapsed, time.time() - process_start)
                self.saved_at = steps
                print(f"[{PEER}] snapshot at {elapsed / 60:.2f} min: {steps:,} agent steps", flush=True)

        def _on_step(self) -> bool:
            elapsed = time.time() - self.start
            if elapsed >= self.next_print:
                print(f"[{PEER}] {self.model.num_timesteps:,} agent steps | "
                      f"{self.model.num_timesteps / elapsed:.1f} steps/s | {elapsed / 60:.1f} min", flush=True)
                self.next_print += 30.0
            if elapsed >= self.next_snapshot:
                self.save(elapsed)
                while self.next_snapshot <= elapsed:
                    self.next_snapshot += 60 * interval
            if elapsed >= 60 * minutes:
                print(f"[{PEER}] time budget reached", flush=True)
                return False
            return True

        def _on_training_end(self) -> None:
            self.save(time.time() - self.start)

    return Snapshots()


def train_peer(spec: dict[str, Any]) -> int:
    """The peer's subprocess: train under the time budget, snapshots in <run_dir>/snapshots/."""
    process_start = time.time()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import torch

    torch.set_num_threads(int(spec["threads"]))
    warnings.filterwarnings("ignore", category=UserWarning)
    run_dir = Path(spec["run_dir"])
    model = build_peer(int(spec["seed"]))
    print(f"[{PEER}] seed {spec['seed']}, {PEER_N_ENVS} envs, {torch.get_num_threads()} torch thread(s), "
          f"cores {usable_cpus()}, "
          f"budget {spec['minutes']} min, snapshot every {spec['interval']} min", flush=True)
    callback = snapshot_callback(run_dir / "snapshots", float(spec["minutes"]), float(spec["interval"]),
                                 process_start)
    start = time.time()
    model.learn(total_timesteps=ZOO_N_TIMESTEPS, callback=callback)
    wall = time.time() - start
    print(f"[{PEER}] done: {model.num_timesteps:,} agent steps in {wall:.0f} s "
          f"({model.num_timesteps / max(wall, 1e-9):.1f} agent steps/s)", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------
# Training runs as subprocesses


@dataclass
class RunSpec:
    recipe: str
    seed: int
    run_dir: Path
    command: list[str]


@dataclass
class Running:
    spec: RunSpec
    proc: subprocess.Popen
    started: float
    cores: set[int] | None
    log: Any
    timed_out: bool = False


def run_specs(plan: Plan, threads: int) -> list[RunSpec]:
    """One run per (seed, recipe), seeds outermost so a drift in machine load falls on every recipe alike."""
    specs = []
    for seed in plan.seeds:
        for name in plan.recipes:
            run_dir = plan.out / name / f"seed{seed}"
            cmd = run_command(name, seed, run_dir, plan.minutes, plan.interval, plan.overrides, threads)
            specs.append(RunSpec(name, seed, run_dir, cmd))
    return specs


def cpu_slots(pin: bool) -> list[set[int] | None]:
    """Where runs go: one core each when pinned, else one slot with the whole machine (None: no pinning)."""
    return [{c} for c in usable_cpus()] if pin else [None]


def start_run(spec: RunSpec, cores: set[int] | None) -> Running:
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    log = (spec.run_dir / "train.log").open("w")
    log.write("$ " + " ".join(spec.command) + "\n")
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy")
    if cores is not None:
        env["OMP_NUM_THREADS"] = str(len(cores))
    preexec = (lambda: os.sched_setaffinity(0, cores)) if cores is not None else None
    proc = subprocess.Popen(spec.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True, preexec_fn=preexec)
    where = f"core {sorted(cores)}" if cores is not None else "whole machine"
    print(f"learning: {spec.recipe} seed {spec.seed}: started (pid {proc.pid}, {where}); log {log.name}", flush=True)
    return Running(spec, proc, time.monotonic(), cores, log)


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the run's process group (it writes a final checkpoint), SIGKILL what is left after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader has exited: whatever it left in its group goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def finish_run(run: Running) -> dict[str, Any]:
    """run.json's content: exit status, seconds, status (ok / partial / failed), the log's tail when not ok."""
    run.log.close()
    try:  # anything the run left behind in its own process group
        os.killpg(run.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    spec = run.spec
    kind = run_kind(spec.recipe, spec.run_dir)
    n_snapshots = len(list_snapshots(spec.run_dir, kind))
    rc = run.proc.returncode
    status = "ok" if rc == 0 and not run.timed_out and n_snapshots else ("partial" if n_snapshots else "failed")
    outcome = {"recipe": spec.recipe, "seed": spec.seed, "status": status, "returncode": rc,
               "timed_out": run.timed_out, "process_seconds": round(time.monotonic() - run.started, 1),
               "snapshots": n_snapshots, "cores": sorted(run.cores) if run.cores is not None else None,
               "command": spec.command}
    if status != "ok":
        outcome["log_tail"] = log_tail(spec.run_dir / "train.log")
    (spec.run_dir / "run.json").write_text(json.dumps(outcome, indent=1))
    print(f"learning: {spec.recipe} seed {spec.seed}: {status} (exit {rc}{', timed out' if run.timed_out else ''}, "
          f"{outcome['process_seconds']:.0f} s, {n_snapshots} snapshot(s))", flush=True)
    if status != "ok":
        print(f"learning: last lines of {spec.run_dir / 'train.log'}:", flush=True)
        for line in outcome["log_tail"]:
            print(f"    {line}", flush=True)
    return outcome


def run_trainings(specs: list[RunSpec], slots: list[set[int] | None], timeout_s: float,
                  poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Run every spec, at most one per slot at a time; a run past `timeout_s` seconds is stopped. Returns outcomes."""
    queue = list(specs)
    running: dict[int, Running] = {}
    outcomes: list[dict[str, Any]] = []
    try:
        while queue or running:
            for i, cores in enumerate(slots):
                if i not in running and queue:
                    running[i] = start_run(queue.pop(0), cores)
            time.sleep(poll_s)
            for i, run in list(running.items()):
                if run.proc.poll() is None and time.monotonic() - run.started > timeout_s:
                    print(f"learning: {run.spec.recipe} seed {run.spec.seed}: still running after "
                          f"{timeout_s:.0f} s; stopping it", flush=True)
                    run.timed_out = True
                    stop_group(run.proc)
                if run.proc.poll() is not None:
                    outcomes.append(finish_run(run))
                    del running[i]
    finally:  # Ctrl-C or an error here: no run is left behind
        for run in running.values():
            stop_group(run.proc, grace_s=10.0)
            run.log.close()
    return outcomes


# ----------------------------------------------------------------------------------------------------
# Snapshots


@dataclass(frozen=True)
class Snapshot:
    """A saved policy and where it stood: training wall-clock seconds, agent steps, env frames."""

    kind: str  # "distracer" or "peer"
    path: Path
    wall_seconds: float
    agent_steps: int
    env_frames: int


def read_distracer_snapshot(ckpt_dir: Path) -> Snapshot:
    """From a checkpoint's state.json: counters (env_steps = agent steps, wall_seconds) and env.action_repeat."""
    state = json.loads((Path(ckpt_dir) / "state.json").read_text())
    counters = state["counters"]
    repeat = int(state.get("config", {}).get("env", {}).get("action_repeat", 1))
    steps = int(counters["env_steps"])
    return Snapshot("distracer", Path(ckpt_dir), float(counters["wall_seconds"]), steps, steps * repeat)


def read_peer_snapshot(sidecar: Path) -> Snapshot:
    """From the peer's sidecar JSON beside its model zip."""
    data = json.loads(Path(sidecar).read_text())
    steps = int(data["agent_steps"])
    frames = int(data.get("env_frames", steps * int(data.get("action_repeat", PEER_FRAME_SKIP))))
    return Snapshot("peer", Path(sidecar).with_suffix(".zip"), float(data["wall_seconds"]), steps, frames)


def list_snapshots(run_dir: Path, kind: str) -> list[Snapshot]:
    """A run's complete snapshots, oldest (fewest agent steps) first; half-written ones are skipped."""
    found: list[Snapshot] = []
    if kind == "peer":
        for sidecar in sorted((run_dir / "snapshots").glob("step_*.json")):
            if sidecar.with_suffix(".zip").is_file():
                found.append(read_peer_snapshot(sidecar))
    else:
        root = run_dir / "checkpoints"
        dirs = sorted(root.glob("ckpt_*")) if root.is_dir() else []
        for ckpt in dirs:
            if ckpt.is_dir() and (ckpt / "MANIFEST.json").is_file():
                try:
                    found.append(read_distracer_snapshot(ckpt))
                except (OSError, KeyError, ValueError, TypeError):
                    continue
    return sorted(found, key=lambda s: (s.agent_steps, s.wall_seconds))


@dataclass
class RunInfo:
    recipe: str
    seed: int
    run_dir: Path
    status: str
    outcome: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return run_kind(self.recipe, self.run_dir)


def run_kind(recipe: str, run_dir: Path) -> str:
    """'peer' or 'distracer': from RECIPES, else (a recipe renamed or removed since the run) from what the run
    left: the peer's snapshots/ folder or distracer's checkpoints/."""
    if recipe in RECIPES:
        return "peer" if RECIPES[recipe].peer else "distracer"
    return "peer" if (run_dir / "snapshots").is_dir() else "distracer"


def discover_runs(out: Path, recipes: list[str] | None) -> list[RunInfo]:
    """The runs under out/<recipe>/seed<S>/ (status from run.json when there is one); a recipe no longer in
    RECIPES is still found when it left snapshots, so runs of earlier commits can be scored again."""
    runs = []
    for recipe_dir in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if recipes is not None and recipe_dir.name not in recipes:
            continue
        for run_dir in sorted(recipe_dir.glob("seed*")):
            if not run_dir.name[4:].isdigit():
                continue
            outcome: dict[str, Any] = {}
            if (run_dir / "run.json").is_file():
                outcome = json.loads((run_dir / "run.json").read_text())
            info = RunInfo(recipe_dir.name, int(run_dir.name[4:]), run_dir, outcome.get("status", "ok"), outcome)
            if not list_snapshots(run_dir, info.kind):
                if info.recipe not in RECIPES:
                    continue  # not a run: a folder of some other kind
                info.status = "failed"
            runs.append(info)
    return runs


# ----------------------------------------------------------------------------------------------------
# Evaluation (spawned worker processes)


@dataclass(frozen=True)
class EpisodeTask:
    kind: str
    path: str
    seed: int


@dataclass
class EpisodeResult:
    task: EpisodeTask
    ret: float
    length: int
    seconds: float
    error: str | None = None
    tiles_missed: int = -1
    """Track tiles never visited; -1 where unknown (the peer's pipeline resets its env before it can be read)."""


_POLICIES: dict[str, Any] = {}  # per worker process: the last few loaded policies, by path


def _init_eval_worker() -> None:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def _cached(path: str, load: Callable[[str], Any]) -> Any:
    if path not in _POLICIES:
        while len(_POLICIES) >= 2:
            _POLICIES.pop(next(iter(_POLICIES)))
        _POLICIES[path] = load(path)
    return _POLICIES[path]


def _load_distracer(path: str) -> tuple[Any, Any]:
    from distracer.evaluate import load_for_evaluation

    loaded = load_for_evaluation(path)
    return loaded.source.act_fn(), loaded.env_config


def distracer_episode(path: str, seed: int) -> tuple[float, int, int]:
    """One deterministic episode of a distracer checkpoint on the stock env: (raw return, env frames, tiles
    missed)."""
    from distracer.evaluate import run_episode

    actor, env_config = _cached(path, _load_distracer)
    episode = run_episode(actor, env_config, seed)
    return episode.ret, episode.length, episode.tiles_missed


def _load_peer(path: str) -> Any:
    from stable_baselines3 import PPO

    # What only training needs (schedules pickled with the model) is replaced, as RL Zoo's enjoy.py does.
    custom = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
    return PPO.load(path, device="cpu", custom_objects=custom)


def peer_episode(path: str, seed: int) -> tuple[float, int, int]:
    """One deterministic episode of a peer snapshot through its own training pipeline on the stock env (tiles
    missed unknown: -1)."""
    from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage

    model = _cached(path, _load_peer)
    venv = VecTransposeImage(VecFrameStack(peer_vec_env(1, seed), n_stack=PEER_FRAME_STACK))
    try:
        obs = venv.reset()
        while True:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, dones, infos = venv.step(action)
            if dones[0]:
                episode = infos[0]["episode"]  # SB3's Monitor, beneath FrameSkip: the raw CarRacing return
                return float(episode["r"]), int(episode["l"]), -1
    finally:
        venv.close()


def eval_episode(task: EpisodeTask) -> EpisodeResult:
    """A pool task; a failure comes back as a result with its error, so the other episodes go on."""
    start = time.perf_counter()
    try:
        run = distracer_episode if task.kind == "distracer" else peer_episode
        ret, length, missed = run(task.path, task.seed)
        return EpisodeResult(task, ret, length, time.perf_counter() - start, tiles_missed=missed)
    except Exception as exc:  # reported per episode, never fatal to the benchmark
        return EpisodeResult(task, float("nan"), 0, time.perf_counter() - start,
                             f"{type(exc).__name__}: {exc}"[:300])


def eval_seeds(episodes: int) -> list[int]:
    """The same evaluation seeds for every recipe and snapshot."""
    return list(range(EVAL_SEED, EVAL_SEED + episodes))


def evaluate_snapshots(snapshots: list[Snapshot], episodes: int, workers: int) -> dict[Path, list[EpisodeResult]]:
    """Every snapshot x every evaluation seed, over `workers` spawned processes; results by snapshot path."""
    tasks = [EpisodeTask(s.kind, str(s.path), seed) for s in snapshots for seed in eval_seeds(episodes)]
    results: dict[Path, list[EpisodeResult]] = {s.path: [] for s in snapshots}
    if not tasks:
        return results
    done_per: dict[str, int] = {}
    with mp.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_init_eval_worker) as pool:
        for result in pool.imap_unordered(eval_episode, tasks):
            results[Path(result.task.path)].append(result)
            done_per[result.task.path] = done_per.get(result.task.path, 0) + 1
            if done_per[result.task.path] == episodes:
                rets = [r.ret for r in results[Path(result.task.path)] if r.error is None]
                score = f"{np.mean(rets):.1f} ± {np.std(rets):.1f}" if rets else "no episode finished"
                print(f"learning: evaluated {_short(Path(result.task.path))}: {score}", flush=True)
    for path, found in results.items():
        found.sort(key=lambda r: r.task.seed)
        for r in found:
            if r.error:
                print(f"learning: episode seed {r.task.seed} of {_short(path)} failed: {r.error}", flush=True)
    return results


def _short(path: Path) -> str:
    """recipe/seedS/checkpoints/ckpt_... : a snapshot's path below the output dir."""
    return "/".join(path.parts[-4:])


# ----------------------------------------------------------------------------------------------------
# Curves: CSV, figure, summary

CSV_COLUMNS = ("recipe", "seed", "snapshot", "wall_seconds", "env_frames", "agent_steps", "eval_mean", "eval_std",
               "episodes", "status", "laps_finished", "tiles_missed_median")


@dataclass
class CurveRow:
    """One snapshot's score: seconds of training wall-clock, env frames, agent steps, return mean/std."""

    recipe: str
    seed: int
    snapshot: str  # path relative to the run dir
    wall_seconds: float
    env_frames: int
    agent_steps: int
    eval_mean: float
    eval_std: float
    episodes: int
    status: str
    laps_finished: float = float("nan")
    """Episodes with every tile visited (NaN where tiles are not known: the peer)."""
    tiles_missed_median: float = float("nan")


def curve_rows(run: RunInfo, snapshots: list[Snapshot], results: dict[Path, list[EpisodeResult]]) -> list[CurveRow]:
    rows = []
    for snap in snapshots:
        ok = [r for r in results.get(snap.path, []) if r.error is None]
        rets = [r.ret for r in ok]
        missed = [r.tiles_missed for r in ok if r.tiles_missed >= 0]
        known = bool(ok) and len(missed) == len(ok)
        rows.append(CurveRow(run.recipe, run.seed, str(snap.path.relative_to(run.run_dir)), snap.wall_seconds,
                             snap.env_frames, snap.agent_steps, float(np.mean(rets)) if rets else float("nan"),
                             float(np.std(rets)) if rets else float("nan"), len(rets), run.status,
                             float(sum(m == 0 for m in missed)) if known else float("nan"),
                             float(np.median(missed)) if known else float("nan")))
    return rows


def write_csv(path: Path, rows: list[CurveRow]) -> None:
    """curves.csv: one row per snapshot, in CSV_COLUMNS order; seconds and returns to 0.1/0.01."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.recipe, r.seed, r.snapshot, f"{r.wall_seconds:.1f}", r.env_frames, r.agent_steps,
                             f"{r.eval_mean:.2f}", f"{r.eval_std:.2f}", r.episodes, r.status,
                             f"{r.laps_finished:g}", f"{r.tiles_missed_median:g}"])


def read_csv(path: Path) -> list[CurveRow]:
    with Path(path).open() as f:
        return [CurveRow(d["recipe"], int(d["seed"]), d["snapshot"], float(d["wall_seconds"]), int(d["env_frames"]),
                         int(d["agent_steps"]), float(d["eval_mean"]), float(d["eval_std"]), int(d["episodes"]),
                         d["status"], float(d.get("laps_finished") or "nan"),
                         float(d.get("tiles_missed_median") or "nan")) for d in csv.DictReader(f)]


def group_curves(rows: list[CurveRow]) -> dict[str, list[Any]]:
    """RunCurves (distracer.plot's type; env_steps holds env frames) per recipe, one per seed, scored rows only."""
    from distracer.plot import RunCurve

    by_run: dict[tuple[str, int], list[CurveRow]] = {}
    for r in rows:
        if r.episodes > 0 and math.isfinite(r.eval_mean):
            by_run.setdefault((r.recipe, r.seed), []).append(r)
    groups: dict[str, list[Any]] = {}
    for (recipe, seed), members in by_run.items():
        members.sort(key=lambda r: (r.wall_seconds, r.agent_steps))
        groups.setdefault(recipe, []).append(RunCurve(
            f"seed {seed}", recipe, np.array([r.env_frames for r in members], float),
            np.array([r.wall_seconds for r in members], float), np.array([r.eval_mean for r in members]),
            np.array([r.eval_std for r in members])))
    return groups


def min_mean_max(runs: list[Any], x_of: str, points: int = 200) -> tuple[np.ndarray, ...]:
    """(grid, min, mean, max) across runs on the x range every run covers (as distracer.plot: no extrapolation)."""
    xs = [getattr(r, x_of) for r in runs]
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([hi])
    ys = np.stack([np.interp(grid, x, r.mean) for x, r in zip(xs, runs)])
    return grid, ys.min(axis=0), ys.mean(axis=0), ys.max(axis=0)


def _draw(ax: Any, recipe: str, runs: list[Any], x_of: str, scale: float, color: str) -> None:
    if len(runs) == 1:  # one seed: its snapshots, with the std over its evaluation episodes
        run = runs[0]
        x = getattr(run, x_of) / scale
        ax.plot(x, run.mean, color=color, marker="o", markersize=3, label=f"{recipe}: {run.name} (± episode std)")
        ax.fill_between(x, run.mean - run.std, run.mean + run.std, color=color, alpha=0.2)
        return
    for run in runs:
        ax.plot(getattr(run, x_of) / scale, run.mean, color=color, alpha=0.25, linewidth=0.8)
    grid, lo, mean, hi = min_mean_max(runs, x_of)
    ax.plot(grid / scale, mean, color=color, linewidth=2, label=f"{recipe}: mean of {len(runs)} seeds (min-max)")
    ax.fill_between(grid / scale, lo, hi, color=color, alpha=0.2)


def plot_curves(rows: list[CurveRow], out: Path, budget_minutes: float | None = None) -> Path | None:
    """curves.png in `distracer plot`'s style: score vs training minutes (left) and vs env frames (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    from distracer.plot import SOLVED_SCORE

    groups = group_curves(rows)
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10
    for color, (recipe, runs) in zip(colors, groups.items()):
        _draw(axes[0], recipe, runs, "wall_seconds", 60.0, color)
        _draw(axes[1], recipe, runs, "env_steps", 1.0, color)
    for ax in axes:
        ax.axhline(SOLVED_SCORE, color="black", linestyle="--", linewidth=1, label=f"solved ({SOLVED_SCORE:.0f})")
        ax.grid(alpha=0.3)
    if budget_minutes:
        axes[0].axvline(budget_minutes, color="grey", linestyle=":", linewidth=1, label="budget")
    axes[1].xaxis.set_major_formatter(EngFormatter())
    axes[0].set_xlabel("training wall-clock (minutes)")
    axes[1].set_xlabel("env frames (agent steps x action repeat)")
    axes[0].set_ylabel("evaluation return (stock CarRacing-v3)")
    axes[0].legend(loc="lower right", fontsize=8)
    n_runs = sum(len(v) for v in groups.values())
    fig.suptitle(f"learning benchmark: {', '.join(groups)} ({n_runs} run{'s' if n_runs > 1 else ''})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def final_rows(rows: list[CurveRow]) -> dict[tuple[str, int], CurveRow]:
    """Each run's last scored snapshot (most agent steps)."""
    finals: dict[tuple[str, int], CurveRow] = {}
    for r in rows:
        if r.episodes > 0 and math.isfinite(r.eval_mean):
            key, order = (r.recipe, r.seed), (r.agent_steps, r.wall_seconds)
            if key not in finals or order > (finals[key].agent_steps, finals[key].wall_seconds):
                finals[key] = r
    return finals


def recipe_finals(rows: list[CurveRow]) -> dict[str, dict[str, Any]]:
    """Per recipe: mean over seeds of each seed's final score, the seeds' spread, frames, agent steps/s."""
    per: dict[str, list[CurveRow]] = {}
    for (recipe, _), row in final_rows(rows).items():
        per.setdefault(recipe, []).append(row)
    out = {}
    for recipe, finals in per.items():
        means = [r.eval_mean for r in finals]
        out[recipe] = {"final_mean": float(np.mean(means)), "seed_min": float(np.min(means)),
                       "seed_max": float(np.max(means)), "seeds": len(finals),
                       "env_frames": float(np.mean([r.env_frames for r in finals])),
                       "agent_steps_per_s": float(np.mean([r.agent_steps / max(r.wall_seconds, 1e-9) for r in finals]))}
    return out


def ratios_to_peer(finals: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Each recipe's final mean over the peer's; None when the peer is absent or its final mean is <= 0."""
    peer = finals.get(PEER, {}).get("final_mean")
    if peer is None:
        return {}
    return {r: (f["final_mean"] / peer if peer > 0 else None) for r, f in finals.items() if r != PEER}


# ----------------------------------------------------------------------------------------------------
# Machine facts and printing


def git_commit() -> str:
    """HEAD's short hash, '+dirty' when tracked files differ from it (read-only git commands)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "stable-baselines3", "gymnasium", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_table(rows: list[CurveRow]) -> None:
    print(f"{'recipe':<12} {'seed':>4} {'status':<8} {'minutes':>7} {'frames':>10} {'agent steps':>11} "
          f"{'score (mean ± std)':>22} {'laps':>5}  snapshot")
    for r in rows:
        score = f"{r.eval_mean:.1f} ± {r.eval_std:.1f} ({r.episodes})" if r.episodes else "not scored"
        laps = f"{r.laps_finished:g}" if not math.isnan(r.laps_finished) else "-"
        print(f"{r.recipe:<12} {r.seed:>4} {r.status:<8} {r.wall_seconds / 60:>7.2f} {r.env_frames:>10,} "
              f"{r.agent_steps:>11,} {score:>22} {laps:>5}  {r.snapshot}")


def print_finals(finals: dict[str, dict[str, Any]], ratios: dict[str, float | None]) -> None:
    for recipe, f in finals.items():
        line = (f"learning: {recipe}: final {f['final_mean']:.1f} (mean over {f['seeds']} seed(s), "
                f"min {f['seed_min']:.1f}, max {f['seed_max']:.1f}) at {f['env_frames']:,.0f} frames, "
                f"{f['agent_steps_per_s']:.1f} agent steps/s")
        if recipe in ratios:
            ratio = ratios[recipe]
            line += (f"; vs {PEER}: ratio {ratio:.2f}" if ratio is not None
                     else f"; vs {PEER}: no ratio (its final mean is <= 0)")
        print(line, flush=True)


# ----------------------------------------------------------------------------------------------------
# Main


def train_all(plan: Plan) -> None:
    """Every run's training subprocess, sequential or pinned; their outcomes land in each run.json."""
    slots = cpu_slots(plan.pin)
    threads = 1 if plan.pin else len(usable_cpus())
    specs = run_specs(plan, threads)
    mode = f"pinned, {len(slots)} at a time" if plan.pin else "sequential, whole machine each"
    print(f"learning: {len(specs)} run(s), {_num(plan.minutes)} min each, snapshot every {_num(plan.interval)} min "
          f"({mode}) -> {plan.out}", flush=True)
    run_trainings(specs, slots, timeout_s=60 * plan.minutes + SETUP_GRACE_S)


def evaluate_runs(plan: Plan, runs: list[RunInfo]) -> list[CurveRow]:
    snaps = {id(run): list_snapshots(run.run_dir, run.kind) for run in runs}
    every = [s for run in runs for s in snaps[id(run)]]
    known = scored_before(plan, every)
    todo = [s for s in every if s.path not in known]
    print(f"learning: evaluating {len(todo)} snapshot(s) x {plan.episodes} episode(s) on stock {STOCK_ID}, seeds "
          f"{EVAL_SEED}..{EVAL_SEED + plan.episodes - 1}, {plan.eval_workers} process(es)"
          + (f"; {len(known)} scored before on the same seeds (evals.json), not again" if known else ""), flush=True)
    results = {**known, **evaluate_snapshots(todo, plan.episodes, plan.eval_workers)}
    rows: list[CurveRow] = []
    for run in runs:
        rows += curve_rows(run, snaps[id(run)], results)
    episodes = {_short(s.path): {"seeds": [r.task.seed for r in results[s.path]],
                                 "returns": [r.ret for r in results[s.path]],
                                 "lengths": [r.length for r in results[s.path]],
                                 "tiles_missed": [r.tiles_missed for r in results[s.path]],
                                 "errors": [r.error for r in results[s.path] if r.error]} for s in every}
    (plan.out / "evals.json").write_text(json.dumps(episodes, indent=1))
    return rows


def scored_before(plan: Plan, snapshots: list[Snapshot]) -> dict[Path, list[EpisodeResult]]:
    """--eval-only: the snapshots the dir's evals.json already scored, without errors, on exactly this run's
    evaluation seeds. A sealed checkpoint never changes and scoring is deterministic, so they are reused: a run
    extended with `--resume` (more snapshots in the same dir) costs only its new snapshots."""
    path = plan.out / "evals.json"
    if plan.eval_only is None or not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    seeds = eval_seeds(plan.episodes)
    known: dict[Path, list[EpisodeResult]] = {}
    for snap in snapshots:
        entry = previous.get(_short(snap.path))
        if entry and entry["seeds"] == seeds and not entry["errors"]:
            missed = entry.get("tiles_missed") or [-1] * len(entry["seeds"])  # older evals.json lack them
            known[snap.path] = [EpisodeResult(EpisodeTask(snap.kind, str(snap.path), seed), ret, length, 0.0,
                                              tiles_missed=m)
                                for seed, ret, length, m in zip(entry["seeds"], entry["returns"], entry["lengths"],
                                                                missed)]
    return known


def run(plan: Plan) -> int:
    start_load, t0 = loadavg(), time.time()
    machine = {"cpu": cpu_model(), "nproc": len(usable_cpus()), "loadavg_start": start_load, "git": git_commit(),
               "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **versions()}
    print(f"learning: {machine['nproc']} core(s) ({machine['cpu']}), load average {start_load}, "
          f"git {machine['git']}", flush=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    budget, interval = plan.minutes, plan.interval
    if plan.eval_only is None:
        plan_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()}
        (plan.out / "plan.json").write_text(json.dumps(plan_json, indent=1))
        train_all(plan)
        runs = discover_runs(plan.out, plan.recipes)
    else:
        saved = plan.eval_only / "plan.json"
        if saved.is_file():  # the budget the runs trained under, not this invocation's defaults
            trained = json.loads(saved.read_text())
            budget, interval = float(trained.get("minutes", budget)), float(trained.get("interval", interval))
        runs = discover_runs(plan.eval_only, plan.recipes if plan.recipes_given else None)
        if not runs:
            print(f"{PROG}: error: {str(plan.eval_only)!r} holds no runs (<recipe>/seed<S>/)", file=sys.stderr)
            return 2

    rows = evaluate_runs(plan, runs)
    write_csv(plan.out / "curves.csv", rows)
    png = plot_curves(rows, plan.out / "curves.png", budget)
    finals = recipe_finals(rows)
    ratios = ratios_to_peer(finals)
    print_table(rows)
    print_finals(finals, ratios)
    not_ok = [r for r in runs if r.status != "ok"]
    for r in not_ok:
        print(f"learning: {r.recipe} seed {r.seed}: {r.status}; see {r.run_dir / 'train.log'}", flush=True)
    machine["loadavg_end"] = loadavg()
    print(f"learning: {machine['cpu']}, {machine['nproc']} core(s), load average {machine['loadavg_start']} at start, "
          f"{machine['loadavg_end']} at end, git {machine['git']}; {time.time() - t0:.0f} s; "
          f"curves in {plan.out / 'curves.csv'}" + (f" and {png}" if png else ""), flush=True)
    runs_out = [{"recipe": r.recipe, "seed": r.seed, "status": r.status, "run_dir": str(r.run_dir),
                 **{k: v for k, v in r.outcome.items() if k in ("returncode", "timed_out", "process_seconds",
                                                                "log_tail")}} for r in runs]
    summary = {"benchmark": "learning", "machine": machine, "minutes": budget, "interval": interval,
               "episodes": plan.episodes, "eval_seeds": eval_seeds(plan.episodes), "pinned": plan.pin,
               "eval_only": plan.eval_only is not None, "recipes": _unique(r.recipe for r in runs),
               "seeds": _unique(r.seed for r in runs),
               "overrides": plan.overrides, "finals": finals, "ratios_to_peer": ratios, "runs": runs_out,
               "out": str(plan.out)}
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_json_last({k: v for k, v in summary.items() if k != "runs"}
                    | {"runs": [{k: v for k, v in r.items() if k != "log_tail"} for r in runs_out]})
    return 0 if not not_ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.train_peer is not None:
        return train_peer(json.loads(args.train_peer))
    try:
        plan = make_plan(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
