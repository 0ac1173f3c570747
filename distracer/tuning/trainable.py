"""The Tune function trainable: one Driver run per trial, reporting each evaluation and checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ray import tune

from distracer.checkpoint import Checkpoint, load_checkpoint
from distracer.runtime.report import RunReport
from distracer.tuning.search import Search, trial_config


def run_trial(sampled: dict[str, Any], search: Search) -> None:
    """Tune function trainable: one Driver run, reporting after each evaluation and checkpoint.

    A restarted trial (FailureConfig, or `--resume` of an interrupted experiment) continues from the
    newest checkpoint Tune holds for it: a distracer checkpoint directory, copied by Tune.
    """
    from distracer.runtime.driver import Driver

    config = trial_config(search, sampled, run_dir=_trial_run_dir(search))
    # The driver's own checkpoints are scratch (Tune keeps copies). Clear those of an earlier attempt of
    # this trial: they may be newer than the Tune checkpoint it resumes from, and pruning (keep=1, by step)
    # would then delete each new checkpoint before Tune could copy it.
    shutil.rmtree(Path(config.run_dir) / "checkpoints", ignore_errors=True)
    evaluations = 0
    restarts = 0  # times this trial was started again from a checkpoint (counted in the checkpoint itself)
    last_was_evaluation = False

    def metrics(report: RunReport, new_evaluation: bool) -> dict[str, Any]:
        return {**report.metrics(), "evaluations": evaluations, "trial_restarts": restarts,
                "new_evaluation": new_evaluation}

    def reporter(report: RunReport) -> None:
        nonlocal evaluations, last_was_evaluation
        last_was_evaluation = report.kind == "evaluation"
        evaluations += last_was_evaluation
        if report.kind == "checkpoint":
            tune.report(metrics(report, False), checkpoint=tune.Checkpoint.from_directory(report.checkpoint))
        else:
            tune.report(metrics(report, last_was_evaluation))

    def run(resume: Checkpoint | None) -> None:
        driver = Driver(config, resume=resume, reporter=reporter, handle_signals=False, in_trial=True)
        driver.run()
        final = driver.final_report
        if last_was_evaluation and final is not None and final.checkpoint:
            # The driver's final checkpoint was written (and reported, unscored) just before the final
            # evaluation of the same weights: report it again with that score, so checkpoints are ranked right.
            tune.report(metrics(final, False), checkpoint=tune.Checkpoint.from_directory(final.checkpoint))

    restored = tune.get_checkpoint()
    if restored is None:
        run(None)
        return
    with restored.as_directory() as ckpt_dir:  # kept open for the whole run: a saved replay is read at setup
        checkpoint = load_checkpoint(ckpt_dir)  # verified once, here, and handed to the driver
        restarts = checkpoint.state["counters"].get("resumes", 0) + 1
        run(checkpoint)


def _trial_run_dir(search: Search) -> str:
    """The driver's run_dir inside the trial: in the experiment directory itself when storage is a local (or
    shared) path, so metrics and TensorBoard files are live there and never copied; Tune's local trial dir
    (on the node running the trial) when storage is a URI."""
    local = tune.get_context().get_trial_dir()
    if "://" in search.storage_path:
        return os.path.join(local, "run")
    return os.path.join(search.experiment_dir, os.path.basename(local.rstrip("/")), "run")


def trial_resources(search: Search, sampled: dict[str, Any]) -> Any:
    """One placement group per trial: the driver, the learner, each worker, each shard (actors.bundle_layout)."""
    from distracer.runtime.actors import bundle_layout

    config = trial_config(search, sampled)
    return tune.PlacementGroupFactory(bundle_layout(config, config.resources.learner_gpus), strategy="PACK")


def make_trainable(search: Search) -> Any:
    def resources(sampled: dict[str, Any]) -> Any:
        return trial_resources(search, sampled)

    return tune.with_resources(tune.with_parameters(run_trial, search=search), resources)
