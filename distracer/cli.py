"""`distracer` command line: train | check | tune | evaluate | select | export | plot | average

train, check and tune take `--config FILE` (repeatable, later files win) and `--set key.path=value`
overrides. Bad input (a config, a checkpoint, a path) stops with one line on stderr and exit code 2,
before anything starts. `distracer COMMAND --help` documents each option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from distracer.errors import ConfigError, StopNow, StoppedWithoutFinal


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                        help="YAML config (tune_configs/*.yaml); repeat to layer files, later ones win")
    parser.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one setting, e.g. --set sac_drq.batch_size=128 --set resources.num_workers=2")


def cmd_train(args: argparse.Namespace) -> int:
    from distracer.config import load_config
    from distracer.runtime.driver import train

    config_files = list(args.config)
    if args.algo is not None or args.preset is not None:
        from distracer.recipes import choose_recipe

        recipe = choose_recipe(args.algo or "auto", args.preset or "auto")
        config_files = recipe.config_files() + config_files
        print(f"distracer: {recipe.reason}; learner on {recipe.device}", flush=True)
        if recipe.warning:
            print(f"distracer: warning: {recipe.warning}", flush=True)
    config = load_config(config_files, args.overrides)
    resume = args.resume
    if resume == "auto":
        from distracer.checkpoint import resume_point

        resume, notes = resume_point(config.run_dir, config.checkpoint.resume_fallback)  # verified once, here
        for note in notes:
            print(note, flush=True)
    summary = train(config, resume=resume)
    for line in done_lines(summary):
        print(line)
    return 0


def done_lines(summary: dict) -> list[str]:
    """What `distracer train` prints at the end: the final checkpoint and the one it recommends, run_dir/best:
    the final selection's pick (`runtime.selection`) or, without one, the best periodic evaluation when it
    scored higher than the last."""
    lines = [f"distracer: done: {summary['env_steps']:,} env steps, {summary['num_updates']:,} updates, "
             f"eval {summary['eval_return_mean']:.1f} ± {summary['eval_return_std']:.1f}; "
             f"checkpoint {summary.get('checkpoint')}"]
    best, best_eval = summary.get("best_checkpoint"), summary.get("best_eval_return", float("nan"))
    selection = summary.get("selection")
    if best and selection:
        chosen = next(c for c in selection["candidates"] if c["checkpoint"] == selection["chosen"])
        lines.append(f"distracer: recommended: {best} (the {chosen['label']}, {chosen['mean']:.1f} on "
                     f"{selection['episodes']} selection tracks; score it on 100 unseen episodes: distracer "
                     f"evaluate --checkpoint {best} --episodes 100)")
    elif best and best_eval > summary["eval_return_mean"]:
        lines.append(f"distracer: the best evaluation was earlier, {best_eval:.1f}: {best} (score it on 100 "
                     f"unseen episodes: distracer evaluate --checkpoint {best} --episodes 100)")
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    """Validate configs without starting anything."""
    import yaml

    from distracer.config import load_config

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.to_dict(), sort_keys=False) if args.show else "config OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distracer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one agent (local embedded Ray, or the cluster in RAY_ADDRESS)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="CKPT|auto", default=None,
                   help="resume from a checkpoint directory, a run directory, or 'auto' (newest in run_dir)")
    p.add_argument("--algo", default=None, metavar="auto|sac_drq|ppo|dqn",
                   help="layer tune_configs/ALGO.yaml first; 'auto': sac_drq with a CUDA GPU, else ppo")
    p.add_argument("--preset", default=None, metavar="auto|laptop|cpu|workstation|cluster",
                   help="layer tune_configs/PRESET.yaml second; 'auto': laptop with a CUDA GPU, else cpu")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="validate a config and print nothing else (or --show the result)")
    _add_config_args(p)
    p.add_argument("--show", action="store_true", help="print the full resolved config as YAML")
    p.set_defaults(func=cmd_check)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


# Subcommands living in their own modules register here (tune, evaluate, plot, export, average).
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def cmd_tune(args: argparse.Namespace) -> int:
    from distracer.tuning import cmd_tune as run  # imports ray.tune: only when asked for

    return run(args)


def _add_tune_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="seeds / hyperparameter search with Ray Tune (tune_configs/search_*.yaml)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="EXPERIMENT_DIR", default=None,
                   help="resume an interrupted search (its errored and unfinished trials, from their checkpoints)")
    p.add_argument("--check", action="store_true",
                   help="validate the config, the tune section and sample trial configs; start nothing")
    p.set_defaults(func=cmd_tune)


_EXTRA_COMMANDS.append(_add_tune_command)


def _add_evaluation_commands(sub: argparse._SubParsersAction) -> None:
    """evaluate | export | plot | average | select: their parsers live beside their code (evaluate.py,
    sb3_interop.py, plot.py, averaging.py, runtime/selection.py)."""
    from distracer.averaging import add_average_parser
    from distracer.evaluate import add_evaluate_parser
    from distracer.plot import add_plot_parser
    from distracer.runtime.selection import add_select_parser
    from distracer.sb3_interop import add_export_parser

    add_evaluate_parser(sub)
    add_export_parser(sub)
    add_plot_parser(sub)
    add_average_parser(sub)
    add_select_parser(sub)


_EXTRA_COMMANDS.append(_add_evaluation_commands)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"distracer: error: {exc}", file=sys.stderr)
        return 2
    except StoppedWithoutFinal as exc:  # a stop that was asked for: the newest checkpoint stands
        print(f"distracer: {exc}", file=sys.stderr)
        return 0
    except StopNow as exc:
        print(f"distracer: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("distracer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
