"""`distracer average`: one checkpoint whose networks are the mean of several checkpoints of one run.

A PPO run's policy swings from snapshot to snapshot late in training (a track driven at one snapshot is lost at
the next), so the last checkpoint, or the best of a few by a 10-episode score, is a lottery. The uniform average
of the weights of the run's last snapshots is stochastic weight averaging over the tail of the run: Izmailov et
al. 2018, "Averaging Weights Leads to Wider Optima and Better Generalization" (arXiv:1803.05407); for deep RL,
Nikishin et al. 2018, "Improving Stability in Deep Reinforcement Learning with Weight Averaging". The mean is
computed by `torch.optim.swa_utils.AveragedModel`, network by network (optimisers are not averaged).

The result is a normal distracer checkpoint (atomic, with a manifest) that `distracer evaluate` and
`distracer export` read. Everything but the networks (optimiser moments, counters, RNG, reward normaliser,
config) is the newest input's, so a run resumed from it continues from the newest input with averaged weights;
`state.json` lists the inputs under `averaged_from`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from torch import nn
from torch.optim.swa_utils import AveragedModel

from distracer.algos.base import Learner
from distracer.checkpoint import (
    check_writable_dir,
    checkpoints_in,
    learner_from_checkpoint,
    refuse_inside_checkpoint,
    save_checkpoint,
)
from distracer.errors import ConfigError

MIN_INPUTS = 2


def checkpoints_to_average(paths: Sequence[str | Path], last: int | None) -> list[Path]:
    """The checkpoint directories to average: `paths` as given, or with `last`, the newest `last` checkpoints
    of the one run directory (or checkpoints/ directory) in `paths`.

    Raises ConfigError for fewer than 2 inputs, or for `last` with more than one path or too few checkpoints.
    """
    if last is not None:
        if len(paths) != 1:
            raise ConfigError(f"--last takes one run directory, got {len(paths)} paths")
        if last < MIN_INPUTS:
            raise ConfigError(f"--last must be {MIN_INPUTS} or more, got {last}")
        root = Path(paths[0])
        if not root.is_dir():
            raise ConfigError(f"--last: {str(root)!r} is not a directory (give a run directory)")
        found = checkpoints_in(root)
        if len(found) < last:
            raise ConfigError(f"{str(root)!r} holds {len(found)} checkpoint(s) named ckpt_*; --last asks for {last} "
                              "(give a run directory, or name the checkpoints, e.g. a Tune trial's checkpoint_N)")
        return found[-last:]
    if len(paths) < MIN_INPUTS:
        raise ConfigError(f"averaging needs {MIN_INPUTS} or more checkpoints, got {len(paths)}")
    return [Path(p) for p in paths]


def check_out_dir(out_root: str | Path, inputs: Sequence[Path]) -> Path:
    """`out_root`, created and proven writable; ConfigError if it is a run's own directory (a run directory, or
    the directory an input sits in), where the average would pass for the run's newest checkpoint in
    `distracer evaluate` and `--resume auto`."""
    out = Path(out_root)
    refuse_inside_checkpoint(out, "--out")
    parents = {Path(p).resolve().parent for p in inputs}
    if (out / "checkpoints").is_dir() or out.resolve() in parents:
        raise ConfigError(f"--out {str(out)!r} is a run's own directory: the average would pass for its newest "
                          "checkpoint; write it elsewhere")
    return check_writable_dir(out, "--out")


def average_checkpoints(paths: Sequence[str | Path], out_root: str | Path) -> Path:
    """Write the weight average of the checkpoints `paths` (directories of one run's algorithm and network
    shapes) as a new checkpoint under `out_root`; returns its path (named after the newest input's env steps).

    Each input is verified and loaded as `distracer evaluate` loads it (manifest, checksums, weights_only).
    Raises ConfigError when an input is not a distracer checkpoint or is given twice, the inputs differ in
    algorithm, seed or the shape of a network (not one run's), or `out_root` is unwritable or a run's own
    directory (see `check_out_dir`).
    """
    loaded = [learner_from_checkpoint(p) for p in paths]
    seen = [ckpt.path.resolve() for _, _, ckpt in loaded]
    if len(set(seen)) < len(seen):
        twice = next(p for p in seen if seen.count(p) > 1)
        raise ConfigError(f"{str(twice)!r} is given twice (a run directory stands for its newest checkpoint)")
    loaded.sort(key=lambda item: item[2].state["counters"]["env_steps"])
    base, config, newest = loaded[-1]
    for learner, other, ckpt in loaded:
        if (other.algo, other.seed) != (config.algo, config.seed):
            raise ConfigError(f"{str(ckpt.path)!r} is a {other.algo} checkpoint of seed {other.seed}; "
                              f"{str(newest.path)!r} is {config.algo}, seed {config.seed}: only one run's "
                              "checkpoints can be averaged")
        _check_same_shapes(learner, base, ckpt.path, newest.path)
    out_root = check_out_dir(out_root, seen)
    for name, module in _networks(base).items():  # optimisers keep the newest input's state
        mean = AveragedModel(module)
        for learner, _, _ in loaded:
            mean.update_parameters(learner.modules()[name])
        module.load_state_dict(mean.module.state_dict())
    state = dict(newest.state)
    state["averaged_from"] = [str(ckpt.path) for _, _, ckpt in loaded]
    return save_checkpoint(out_root, base.state_dict(), state, int(state["counters"]["env_steps"]))


def _networks(learner: Learner) -> dict[str, nn.Module]:
    """The learner's networks: its checkpointed modules less the optimisers."""
    return {name: m for name, m in learner.modules().items() if isinstance(m, nn.Module)}


def _check_same_shapes(learner: Learner, base: Learner, path: Path, base_path: Path) -> None:
    """ConfigError unless every network of `learner` has the shapes of `base`'s (AveragedModel would fail deep
    inside torch)."""
    for name, module in _networks(base).items():
        mine = {k: tuple(v.shape) for k, v in learner.modules()[name].state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        if mine != theirs:
            raise ConfigError(f"{str(path)!r} and {str(base_path)!r} have different {name} networks "
                              "(another run's or another config's checkpoints cannot be averaged)")


def cmd_average(args: argparse.Namespace) -> int:
    paths = checkpoints_to_average(args.checkpoints, args.last)
    written = average_checkpoints(paths, args.out)
    print(f"distracer: averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {written}")
    return 0


def add_average_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("average", help="average the weights of a run's last checkpoints into one checkpoint")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="checkpoint directories of one run, or with --last one run directory")
    p.add_argument("--last", type=int, default=None, metavar="N",
                   help="average the newest N checkpoints of the run directory given")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="directory to write the averaged checkpoint into (ckpt_<env steps> inside it)")
    p.set_defaults(func=cmd_average)
