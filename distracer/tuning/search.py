"""A search: the base training config plus its `tune:` settings; loading, `--set` overrides, trial configs."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Any

from distracer.config import (
    WHEN_ALGO,
    TrainConfig,
    config_from_dict,
    current_names,
    deep_merge,
    nest_dotted,
    parse_override,
    read_layers,
    read_yaml,
)
from distracer.errors import ConfigError
from distracer.tuning.settings import SearchDim, TuneSettings


@dataclass
class Search:
    """A validated search: the raw base config (what YAML + --set gave) and its tune settings."""

    base: dict[str, Any]
    config: TrainConfig
    settings: TuneSettings

    @property
    def storage_path(self) -> str:
        path = self.settings.storage_path or self.config.run_dir
        return path if "://" in path else os.path.abspath(path)

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.settings.name}"


def trial_values(settings: TuneSettings, sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values (Tune's config: flat dotted keys), with each dim's `also` keys filled in."""
    out = dict(sampled)
    for key, dim in settings.search_space.items():
        if key in sampled:
            out.update({other: sampled[key] for other in dim.also})
    return out


def trial_config(search: Search, sampled: dict[str, Any], run_dir: str | None = None) -> TrainConfig:
    """The validated TrainConfig of one trial: base config + sampled values (+ the trial's own run_dir)."""
    # The base holds the current names (config.current_names): so must the sampled keys, or an old-named dim
    # would sit beside its new name in the base.
    sampled_tree = current_names(nest_dotted(trial_values(search.settings, sampled)))
    data = deep_merge(copy.deepcopy(search.base), sampled_tree)
    if run_dir is not None:
        # The trial's driver keeps one checkpoint of its own: Tune keeps the ones that matter.
        data = deep_merge(data, {"run_dir": run_dir, "checkpoint": {"keep": 1}})
    return config_from_dict(data)


def load_search(paths: list[str] | str | None, overrides: list[str] | None = None) -> Search:
    """YAML files + `--set` overrides -> a validated Search; `--set tune.x.y=v` merges into the tune section."""
    if isinstance(paths, str):
        paths = [paths]
    given: dict[str, Any] = {}
    tune_items: list[str] = []
    for item in overrides or []:
        parsed = None if item.startswith("tune.search_space.") else parse_override(item)
        if parsed is None or "tune" in parsed:
            tune_items.append(item)
        else:
            given = deep_merge(given, parsed)
    raw = read_layers(paths, given)
    tune_raw = raw.pop("tune", None) or {}
    if not isinstance(tune_raw, dict):
        raise ConfigError(f"tune must be a mapping, got {tune_raw!r}")
    for item in tune_items:
        if item.startswith("tune.search_space."):
            tune_raw = _override_search_space(tune_raw, item)
            continue
        parsed = parse_override(item)
        if not isinstance(parsed["tune"], dict):
            raise ConfigError(f"override {item!r}: set a key of tune, e.g. tune.num_samples=4")
        tune_raw = deep_merge(tune_raw, parsed["tune"])
    if "algo" in (tune_raw.get("search_space") or {}) and any(WHEN_ALGO in read_yaml(p) for p in paths or []):
        raise ConfigError(f"tune.search_space samples algo, but the config's {WHEN_ALGO} block is resolved for one "
                          "algorithm before the search; search one algorithm at a time")
    config = config_from_dict(copy.deepcopy(raw))
    settings = TuneSettings.parse(tune_raw, config)
    search = Search(raw, config, settings)
    check_samples(search)
    return search


def _override_search_space(tune_raw: dict[str, Any], item: str) -> dict[str, Any]:
    """`--set tune.search_space.<dotted key>={type: ...}` adds or replaces a dim, and
    `--set tune.search_space.<dotted key>.<field>=value` changes one field of an existing dim, `=null` drops one
    (search-space keys contain dots themselves, so the generic nesting of --set does not apply)."""
    path, _, _ = item.partition("=")
    rest = path[len("tune.search_space."):]
    value = parse_override(f"v={item.partition('=')[2]}")["v"]
    space = dict(tune_raw.get("search_space") or {})
    key, _, last = rest.rpartition(".")
    if rest not in space and key in space and last in {f.name for f in dataclasses.fields(SearchDim)}:
        space[key] = {**space[key], last: value}
    elif isinstance(value, dict):
        space[rest] = value
    elif value is None:  # `tune.search_space.<key>=null` drops a dim
        space.pop(rest, None)
    else:
        raise ConfigError(f"override {item!r}: give a dim like tune.search_space.{rest}="
                          "'{type: loguniform, lower: 1.0e-5, upper: 1.0e-3}' or set a field of an existing dim")
    return {**tune_raw, "search_space": space}


def check_samples(search: Search, random_draws: int = 3) -> None:
    """Validate trial configs before anything starts: each seed, both ends / every value of each dim
    (others at the base), and a few random joint draws. An error names the key and value."""
    settings = search.settings
    probes: list[dict[str, Any]] = [{"seed": s} for s in settings.seeds]
    for key, dim in settings.search_space.items():
        probes += [{key: v} for v in dim.probes()]
    rng = random.Random(0)
    for _ in range(random_draws if settings.search_space else 0):
        probes.append({key: _draw(dim, rng) for key, dim in settings.search_space.items()})
    for sampled in probes:
        try:
            trial_config(search, sampled)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in sampled.items())
            raise ConfigError(f"tune.search_space gives a bad trial ({shown}): {exc}") from None


def _draw(dim: SearchDim, rng: random.Random) -> Any:
    if dim.type in ("choice", "grid"):
        return rng.choice(list(dim.values or []))
    if dim.type == "randint":
        return rng.randrange(int(dim.lower), int(dim.upper))
    if dim.type == "loguniform":
        return math.exp(rng.uniform(math.log(dim.lower), math.log(dim.upper)))
    return rng.uniform(dim.lower, dim.upper)
