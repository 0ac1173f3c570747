"""Running, resuming and summarising a search (`distracer tune`)."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from ray import tune

from distracer.config import (
    config_from_dict,
    deep_merge,
)
from distracer.errors import ConfigError
from distracer.tuning.search import Search, load_search
from distracer.tuning.settings import SEARCH_FILE, TuneSettings
from distracer.tuning.stoppers import build_scheduler, build_stopper
from distracer.tuning.trainable import make_trainable


def param_space(settings: TuneSettings) -> dict[str, Any]:
    space = {key: dim.domain() for key, dim in settings.search_space.items()}
    if settings.seeds:
        space["seed"] = tune.grid_search(list(settings.seeds))
    return space


def run_config(search: Search) -> Any:
    s = search.settings
    return tune.RunConfig(
        name=s.name, storage_path=search.storage_path, stop=build_stopper(s), verbose=1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=s.num_to_keep, checkpoint_score_attribute=s.metric,
                                                checkpoint_score_order=s.mode),
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
    )


def build_tuner(search: Search) -> Any:
    s = search.settings
    concurrent = s.max_concurrent_trials or None
    return tune.Tuner(
        make_trainable(search),
        param_space=param_space(s),
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, num_samples=s.num_samples,
                                    scheduler=build_scheduler(s), max_concurrent_trials=concurrent),
        run_config=run_config(search),
    )


def check_fits_cluster(search: Search) -> None:
    """Refuse a trial that the cluster cannot hold now: Tune would wait for it forever."""
    import ray

    if search.settings.wait_for_resources:
        return
    from distracer.runtime.actors import bundle_layout

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    config = search.config
    bundles = bundle_layout(config, config.resources.learner_gpus)
    need: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            need[name] = need.get(name, 0.0) + amount
        if not any(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes):
            raise ConfigError(f"a trial needs a bundle {bundle} that no node of the Ray cluster has "
                              "(set tune.wait_for_resources=true on an autoscaling cluster)")
    short = {k: f"{v:g} > {total.get(k, 0.0):g}" for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        raise ConfigError(f"a trial needs more than the Ray cluster has ({short}; bundles {bundles}); lower "
                          "resources.* or set tune.wait_for_resources=true on an autoscaling cluster")


def resolve_gpus(search: Search) -> None:
    """Fix learner_gpus=-1 (auto) against the running cluster, so the placement group and the driver agree."""
    from distracer.ray_setup import learner_gpus

    gpus = learner_gpus(search.config.resources)
    search.base = deep_merge(search.base, {"resources": {"learner_gpus": gpus}})
    search.config = config_from_dict(copy.deepcopy(search.base))


def save_search(search: Search) -> None:
    Path(search.experiment_dir).mkdir(parents=True, exist_ok=True)
    data = {"base": search.base, "tune": search.settings.to_dict()}
    (Path(search.experiment_dir) / SEARCH_FILE).write_text(json.dumps(data, indent=1, default=str))


def load_saved_search(experiment_dir: str | Path) -> Search:
    path = Path(experiment_dir) / SEARCH_FILE
    if not path.is_file():
        raise ConfigError(f"{str(experiment_dir)!r} is not a distracer tune experiment (no {SEARCH_FILE})")
    data = json.loads(path.read_text())
    config = config_from_dict(copy.deepcopy(data["base"]))
    tune_raw = {k: v for k, v in data["tune"].items()}
    settings = TuneSettings.parse(tune_raw, config)
    search = Search(data["base"], config, settings)
    # The experiment may have been moved: storage follows the directory given.
    experiment_dir = os.path.abspath(experiment_dir)
    search.settings.storage_path, search.settings.name = os.path.split(experiment_dir)
    return search


def run_search(search: Search, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a search on the Ray this process is connected to; returns the best trial's summary."""
    check_fits_cluster(search)
    if resume:
        if not tune.Tuner.can_restore(search.experiment_dir):
            raise ConfigError(f"{search.experiment_dir!r} holds no Tune experiment state to resume")
        tuner = tune.Tuner.restore(search.experiment_dir, trainable=make_trainable(search), resume_errored=True)
    else:
        if Path(search.experiment_dir, "tuner.pkl").exists():
            raise ConfigError(f"experiment {search.experiment_dir!r} exists; resume it with "
                              f"`distracer tune --resume {search.experiment_dir}` or set tune.name")
        save_search(search)
        tuner = build_tuner(search)
    results = tuner.fit()
    return best_of(results, search.settings)


def best_of(results: Any, settings: TuneSettings) -> dict[str, Any]:
    """The best trial by its best-ever `metric` (not its last): config, score and best checkpoint."""
    errors = [str(e).splitlines()[0] for e in results.errors]
    # Trials neither done nor errored: the experiment was interrupted (Ctrl-C) and can be resumed. (Tune marks
    # the last result of a finished or stopped trial done=True; ResultGrid.num_terminated counts interrupted
    # trials as terminated.)
    unfinished = sum(1 for r in results if r.error is None and not r.metrics.get("done"))
    try:
        best = results.get_best_result(metric=settings.metric, mode=settings.mode, scope="all")
    except RuntimeError:
        return {"best": None, "num_trials": len(results), "errors": errors, "unfinished": unfinished}
    checkpoint, checkpoint_score = _best_checkpoint(best, settings)
    history = best.metrics_dataframe
    score = None
    if history is not None and settings.metric in history:
        column = history[settings.metric].dropna()
        score = float(column.max() if settings.mode == "max" else column.min()) if len(column) else None
    return {
        "best": {"trial_dir": best.path, "config": best.config, "score": score,
                 "checkpoint": checkpoint.path if checkpoint is not None else None,
                 "checkpoint_score": checkpoint_score,
                 "last_metrics": {k: best.metrics.get(k) for k in ("env_steps", "eval_return_mean")}},
        "num_trials": len(results),
        "errors": errors,
        "unfinished": unfinished,
    }


def _best_checkpoint(result: Any, settings: TuneSettings) -> tuple[Any, float | None]:
    """The trial's kept checkpoint with the best finite score, else its newest. (Tune's own
    Result.get_best_checkpoint takes max() over scores that include NaN, and NaN can win.)"""
    scored = [(c, m[settings.metric]) for c, m in result.best_checkpoints
              if isinstance(m.get(settings.metric), int | float) and math.isfinite(m[settings.metric])]
    if not scored:
        return result.checkpoint, None
    pick = max if settings.mode == "max" else min
    return pick(scored, key=lambda item: item[1])


def cmd_tune(args: Any) -> int:
    """`distracer tune --config FILE [--set k=v]` or `distracer tune --resume EXPERIMENT_DIR`."""
    from distracer.ray_setup import init_ray

    if args.resume and (args.config or args.overrides):
        raise ConfigError("--resume takes the experiment's saved config; drop --config/--set")
    if not args.resume and not args.config:
        raise ConfigError("give --config tune_configs/search_*.yaml (or --resume EXPERIMENT_DIR)")
    search = load_saved_search(args.resume) if args.resume else load_search(args.config, args.overrides)
    if args.check:
        print(f"search OK: {search.settings.num_trials()} trial(s) -> {search.experiment_dir}")
        return 0
    import ray

    started = init_ray(search.config.resources)
    try:
        if not args.resume:
            resolve_gpus(search)
        summary = run_search(search, resume=bool(args.resume))
    finally:
        if started:
            ray.shutdown()
    print(format_summary(summary, search))
    if summary["unfinished"]:
        return 130
    return 0 if summary["best"] is not None else 1


def format_summary(summary: dict[str, Any], search: Search) -> str:
    lines = [f"distracer: {summary['num_trials']} trial(s) in {search.experiment_dir}"]
    lines += [f"distracer: trial error: {e}" for e in summary["errors"]]
    if summary["unfinished"]:
        lines.append(f"distracer: interrupted with {summary['unfinished']} trial(s) unfinished; "
                     f"continue with: distracer tune --resume {search.experiment_dir}")
        return "\n".join(lines)
    best = summary["best"]
    if best is None:
        lines.append(f"distracer: no trial reported {search.settings.metric}")
        return "\n".join(lines)
    score = "n/a" if best["score"] is None else f"{best['score']:.1f}"
    lines += [f"distracer: best {search.settings.metric} {score}",
              f"distracer: best config {json.dumps(best['config'], sort_keys=True)}",
              f"distracer: best checkpoint {best['checkpoint']} ({search.settings.metric} {best['checkpoint_score']})",
              f"distracer: resume with: distracer tune --resume {search.experiment_dir}"]
    return "\n".join(lines)
