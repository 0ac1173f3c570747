"""Which algorithm and preset `distracer train --algo auto --preset auto` (and so `make train`) runs.

A recipe is an algorithm config layered with a resources preset, both files in `tune_configs/`. On a machine
with a CUDA GPU the default is SAC+DrQ (the sample-efficient learner, whose replay ratio a GPU sustains) with
the laptop preset; without one it is PPO with the `cpu` preset: at 30 minutes on 2 cores ahead of SAC+DrQ and
DQN (docs/RESULTS.md; it holds to its schedule's end, 34-85 minutes there, and `tune_configs/ppo_two_phase.yaml`
is the two-hour recipe). A
user's explicit choice is kept; a CPU run of a learner-bound algorithm (SAC+DrQ, DQN) gets a one-line warning
with the speed measured with the `cpu` preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distracer.algos import ALGOS
from distracer.errors import ConfigError

PRESETS = ("laptop", "cpu", "workstation", "cluster")
GPU_RECIPE = ("sac_drq", "laptop")
CPU_RECIPE = ("ppo", "cpu")
# What a CPU-only run of each algorithm can expect, from the runs in docs/RESULTS.md.
CPU_NOTES = {
    "sac_drq": "SAC+DrQ on a CPU is learner-bound (about 11 updates/s, 45 agent steps/s on 2 cores, a third of "
               "PPO's; docs/RESULTS.md): it learns the most per agent step, less per minute than PPO",
    "dqn": "DQN on a CPU is learner-bound (about 15 updates/s, 60 agent steps/s on 2 cores; docs/RESULTS.md) "
           "and learns less per minute than PPO",
}


@dataclass(frozen=True)
class Recipe:
    algo: str
    preset: str
    device: str
    """'cuda' or 'cpu': what this machine offers the learner."""
    reason: str
    """One line for the user: why this algorithm and preset."""
    warning: str | None = None

    def config_files(self, root: Path | None = None) -> list[str]:
        """The two YAML files, algorithm first (the preset layers over it)."""
        root = root or config_dir()
        return [str(root / f"{self.algo}.yaml"), str(root / f"{self.preset}.yaml")]


def config_dir() -> Path:
    """`tune_configs/` of the checkout this package runs from, else of the working directory."""
    beside = Path(__file__).resolve().parent.parent / "tune_configs"
    return beside if beside.is_dir() else Path.cwd() / "tune_configs"


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose_recipe(algo: str = "auto", preset: str = "auto", cuda: bool | None = None) -> Recipe:
    """Resolve 'auto' for the algorithm and the preset against this machine; refuse unknown names in one line."""
    if algo != "auto" and algo not in ALGOS:
        raise ConfigError(f"--algo {algo!r} is unknown; allowed: auto, {', '.join(ALGOS)}")
    if preset != "auto" and preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is unknown; allowed: auto, {', '.join(PRESETS)}")
    cuda = has_cuda() if cuda is None else cuda
    device = "cuda" if cuda else "cpu"
    best_algo, best_preset = GPU_RECIPE if cuda else CPU_RECIPE
    chosen_algo = best_algo if algo == "auto" else algo
    chosen_preset = best_preset if preset == "auto" else preset
    why_machine = "a CUDA GPU was found" if cuda else "no CUDA GPU was found"
    if algo == "auto":
        reason = f"{why_machine}, so the best recipe for it: {chosen_algo} with the {chosen_preset} preset"
    else:
        reason = f"{chosen_algo} as asked, with the {chosen_preset} preset ({why_machine})"
    warning = None
    if not cuda and chosen_algo in CPU_NOTES:
        warning = f"{CPU_NOTES[chosen_algo]}; --algo auto picks {CPU_RECIPE[0]} here"
    return Recipe(chosen_algo, chosen_preset, device, reason, warning)
