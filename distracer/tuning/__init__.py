"""`distracer tune`: seeds, hyperparameter searches, early stopping and fault tolerance on Ray Tune.

A search is a training config (tune_configs/*.yaml) plus a `tune:` section::

    tune:
      num_samples: 4                  # draws from search_space, each run once per seed
      seeds: [1, 2, 3]                # a grid: every sample runs with every seed
      search_space:
        sac_drq.actor_lr: {type: loguniform, lower: 3.0e-5, upper: 1.0e-3, also: [sac_drq.critic_lr]}
      metric: eval_return_mean        # what "best" means (ASHA, checkpoints kept, best trial)
      mode: max
      scheduler: {type: asha, grace_period: 100000, max_t: 1000000, reduction_factor: 3}
      stoppers:
        target: {value: 900, scope: experiment}          # stop everything once a trial scores 900
        plateau: {std: 5.0, num_results: 6, grace_period: 4}
        time_budget_s: 43200
      num_to_keep: 2                  # Tune checkpoints kept per trial, best by `metric`
      max_failures: 2                 # a failed trial restarts from its last checkpoint

Each trial is one `distracer.runtime.driver.Driver` run inside a Tune function trainable. The trial's
placement group holds one bundle per process the driver starts (`runtime.actors.bundle_layout`) and the driver
pins each actor to its bundle, so a trial starts only when all of it fits and then never waits.
Everything Tune-facing is imported from `ray.tune` (`ray.train.report` inside Tune fails the trial).

Modules: `settings` (the `tune:` section), `search` (loading a search, trial configs), `trainable` (one
Driver run per trial), `stoppers` (stoppers and the scheduler), `runner` (running, resuming, the summary).
"""

from distracer.tuning.runner import (
    best_of,
    build_tuner,
    check_fits_cluster,
    cmd_tune,
    format_summary,
    load_saved_search,
    run_search,
    save_search,
)
from distracer.tuning.search import Search, check_samples, load_search, trial_config, trial_values
from distracer.tuning.settings import REPORTED, SEARCH_FILE, TuneSettings
from distracer.tuning.stoppers import NewEvaluationsOnly, TargetScoreStopper, build_scheduler, build_stopper
from distracer.tuning.trainable import make_trainable, run_trial, trial_resources

__all__ = ["REPORTED", "SEARCH_FILE", "NewEvaluationsOnly", "Search", "TargetScoreStopper", "TuneSettings",
           "best_of", "build_scheduler", "build_stopper", "build_tuner", "check_fits_cluster", "check_samples",
           "cmd_tune", "format_summary", "load_saved_search", "load_search", "make_trainable", "run_search",
           "run_trial", "save_search", "trial_config", "trial_resources", "trial_values"]
