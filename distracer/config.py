"""Typed run configuration: dataclasses, YAML loading with `extends:`, dotted overrides, validation.

The one config loader of distracer. Every key of a YAML file or `--set key=value` override is checked
against these dataclasses: an unknown key, a wrong type or an out-of-range value stops the run before
anything starts, with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from distracer.algos import ALGOS, config_class, spec
from distracer.algos.base import DeviceConfig
from distracer.envs.config import TRAINING_ONLY_FIELDS, EnvConfig
from distracer.errors import ConfigError
from distracer.strict_yaml import load_yaml


@dataclass
class ReplayConfig:
    ram_budget: str = "1GB"
    """RAM for all replay shards together, e.g. '1.5GB', '800MiB'; split evenly across shards."""
    num_shards: int = 1
    """Replay-shard actors; worker i writes to shard i % num_shards."""
    compress: bool = False
    """lz4-compress stored frames (~4x more transitions per GB, a few µs per frame to decompress)."""
    prefetch: int = 4
    """Sample requests the learner keeps in flight so it never waits on replay."""

    def validate(self) -> None:
        if self.num_shards < 1:
            raise ConfigError(f"replay.num_shards={self.num_shards} must be >= 1")
        if self.prefetch < 1:
            raise ConfigError(f"replay.prefetch={self.prefetch} must be >= 1")


@dataclass
class ResourcesConfig:
    address: str | None = None
    """Ray cluster address; None starts an embedded local Ray (or joins RAY_ADDRESS when it is set)."""
    num_workers: int = 1
    """RolloutWorker actors."""
    envs_per_worker: int = 1
    """Environments each rollout worker steps in turn."""
    worker_cpus: float = 1.0
    """CPUs reserved per rollout worker."""
    learner_cpus: float = 1.0
    """CPUs reserved for the learner actor."""
    learner_gpus: float = -1.0
    """GPUs for the learner: -1 = one if the cluster has any, else 0; 0 = CPU; 1 = require one."""
    shard_cpus: float = 0.5
    """CPUs reserved per replay shard."""
    fit_timeout_s: float = 300.0
    """On a joined cluster (it may be autoscaling), how long to wait for the run's CPUs/GPUs to exist before a
    one-line error; an embedded local Ray that lacks them is refused at once."""
    connect_timeout_s: float = 20.0
    """How long joining a cluster (resources.address or RAY_ADDRESS) may take before a one-line error."""
    max_recoveries: int = 3
    """Times a run rebuilds its actors from its newest intact checkpoint after the learner or a replay shard dies;
    the work since that checkpoint is redone. Past it (0: at the first death) the run stops with one line. A dead
    rollout worker needs none of this: Ray restarts it, losing only its call in flight (docs/RELIABILITY.md)."""
    local_num_cpus: int | None = None
    """CPUs of the embedded local Ray (None: all of this machine's)."""
    object_store_memory: str | None = None
    """Object store size of the embedded local Ray, e.g. '300MB' (None: Ray's default, 30% of RAM)."""
    learner_resources: dict = field(default_factory=dict)
    """Custom Ray resources the learner actor asks for, e.g. {learner_node: 1} to pin it to a node type."""
    worker_resources: dict = field(default_factory=dict)
    """Custom Ray resources each rollout worker and replay shard asks for, e.g. {rollout_node: 0.01}."""

    def validate(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"resources.num_workers={self.num_workers} must be >= 1")
        if self.envs_per_worker < 1:
            raise ConfigError(f"resources.envs_per_worker={self.envs_per_worker} must be >= 1")
        for name in ("worker_cpus", "learner_cpus", "shard_cpus"):
            if getattr(self, name) < 0:
                raise ConfigError(f"resources.{name}={getattr(self, name)} must be >= 0")
        if self.max_recoveries < 0:
            raise ConfigError(f"resources.max_recoveries={self.max_recoveries} must be >= 0")
        if self.fit_timeout_s < 0:
            raise ConfigError(f"resources.fit_timeout_s={self.fit_timeout_s} must be >= 0")
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"resources.connect_timeout_s={self.connect_timeout_s} must be > 0")
        if self.learner_gpus < 0 and self.learner_gpus != -1:
            raise ConfigError(f"resources.learner_gpus={self.learner_gpus} must be -1 (auto) or >= 0")


@dataclass
class OffPolicyLoopConfig:
    """How rollout workers and the learner of an off-policy run (SAC+DrQ, DQN) exchange data:
    `runtime/off_policy.py`'s OffPolicyLoop. PPO's rollouts are `ppo.num_steps` long."""

    fragment_length: int = 64
    """Agent steps per env that a rollout worker collects before pushing one fragment to its replay shard."""
    weights_interval: int = 50
    """The learner publishes new policy weights to the workers every this many updates."""

    def validate(self) -> None:
        if self.fragment_length < 1:
            raise ConfigError(f"off_policy.fragment_length={self.fragment_length} must be >= 1")
        if self.weights_interval < 1:
            raise ConfigError(f"off_policy.weights_interval={self.weights_interval} must be >= 1")


@dataclass
class EvalConfig:
    every_env_steps: int = 50_000
    """Evaluate on the stock CarRacing-v3 every this many env steps (0 = only at the end)."""
    episodes: int = 5
    """Episodes per periodic evaluation (a 'solved' claim needs 100: use `distracer evaluate`)."""
    seed: int = 1_000_000
    """First evaluation seed; training seeds stay below it so evaluation tracks are never trained on."""
    select_episodes: int = 20
    """At the end of a run, score the final checkpoint, the `select_last` - 1 before it and the periodic best on
    these many shared tracks and keep the one chosen as run_dir/best (`distracer.runtime.selection`: the final
    unless another beats it by a paired 95% margin); 0 = off (best/ keeps the periodic best). Not in Tune trials,
    nor after a stop signal."""
    select_last: int = 3
    """How many of the newest step checkpoints (the final one included) the final selection considers; at most
    `checkpoint.keep` exist."""

    def validate(self) -> None:
        if self.every_env_steps < 0:
            raise ConfigError(f"eval.every_env_steps={self.every_env_steps} must be >= 0")
        if self.episodes < 1:
            raise ConfigError(f"eval.episodes={self.episodes} must be >= 1")
        if self.select_episodes < 0 or self.select_episodes == 1:
            raise ConfigError(f"eval.select_episodes={self.select_episodes} must be 0 (off) or >= 2 (a paired margin "
                              "needs two tracks)")
        if self.select_last < 1:
            raise ConfigError(f"eval.select_last={self.select_last} must be >= 1")


@dataclass
class CheckpointConfig:
    every_env_steps: int = 50_000
    """Write a checkpoint every this many env steps (and always at the end and on Ctrl-C)."""
    every_minutes: float = 0.0
    """Also write one every this many minutes of training wall-clock (0 = off); benchmarks/learning.py uses it
    to snapshot runs at fixed wall-clock intervals."""
    keep: int = 3
    """Checkpoints kept on disk (oldest removed first)."""
    save_replay: bool = False
    """Also save the replay shards with each checkpoint, so a resumed run keeps its data."""
    keep_best: bool = True
    """Keep the learner state of the best periodic evaluation as `run_dir/best/ckpt_*` (replacing the previous
    best), so a run whose score peaks and then falls back still keeps, and reports, its best policy."""
    resume_fallback: bool = False
    """`--resume auto` when the newest checkpoint is damaged: False stops with one line naming the newest intact
    one; True resumes from that one (saying which it skipped)."""

    def validate(self) -> None:
        if self.every_env_steps < 1:
            raise ConfigError(f"checkpoint.every_env_steps={self.every_env_steps} must be >= 1")
        if self.keep < 1:
            raise ConfigError(f"checkpoint.keep={self.keep} must be >= 1")
        if not (math.isfinite(self.every_minutes) and self.every_minutes >= 0):
            raise ConfigError(f"checkpoint.every_minutes={self.every_minutes} must be a finite number >= 0")


@dataclass
class EnvSwitchConfig:
    """A change of training rules part-way through a run: for example the standstill rule on while the car learns
    to drive, off for the late, fine-tuning part (docs/RESULTS.md: the two-phase PPO run)."""

    at_budget: float = 0.0
    """Fraction of the run's budget (0 to 1, exclusive) after which the rollout workers train under `env`: the
    further along of elapsed / `max_minutes` (wall-clock across resumes) and env steps / `total_env_steps`, as
    `ppo.lr_horizon='budget'` measures it. 0 = never. There the run writes a checkpoint and restarts its rollout
    workers with the new rules; the learner, its optimiser and the replay go on untouched. A run resumed past
    that point starts under the new rules."""
    env: dict = field(default_factory=dict)
    """The env settings to change and their new values, e.g. `{standstill_frames: 0}`: training-only ones only
    (`envs.config.TRAINING_ONLY_FIELDS`), since what the policy sees and does must stay the same."""

    def validate(self, env: EnvConfig) -> None:
        if not (0.0 <= self.at_budget < 1.0):
            raise ConfigError(f"env_switch.at_budget={self.at_budget} must be in [0, 1) (0 = no switch)")
        if bool(self.at_budget) != bool(self.env):
            raise ConfigError("env_switch needs both at_budget (> 0) and env (the rules to change), or neither; got "
                              f"at_budget={self.at_budget}, env={self.env}")
        self.switched(env)

    def switched(self, env: EnvConfig) -> EnvConfig:
        """`env` with this switch's settings applied, checked like any other env setting."""
        acting = sorted(set(self.env) - set(TRAINING_ONLY_FIELDS))
        if acting:
            raise ConfigError(f"env_switch.env may change training-only settings ({', '.join(TRAINING_ONLY_FIELDS)}), "
                              f"not {', '.join(acting)}")
        new = apply_dict(copy.deepcopy(env), self.env, "env_switch.env.")
        try:
            new.validate()
        except ConfigError as exc:  # EnvConfig names its fields env.*: say where this value came from
            raise ConfigError(f"env_switch.env: {exc}") from None
        return new


def _algo_default(name: str):
    return field(default_factory=lambda: config_class(name)())


@dataclass
class TrainConfig:
    algo: str = "sac_drq"
    """Algorithm: sac_drq, ppo or dqn."""
    seed: int = 1
    """Seed of the run: env tracks (seed, seed+1, ... per env), network init, exploration."""
    total_env_steps: int = 1_000_000
    """Agent steps (each covering env.action_repeat frames) to train for, over all workers."""
    run_dir: str = "runs/default"
    """Where checkpoints, TensorBoard logs and metrics go."""
    max_minutes: float = 0.0
    """Stop after this much wall-clock time (0 = no limit); a final checkpoint is written."""
    env: EnvConfig = field(default_factory=EnvConfig)
    env_switch: EnvSwitchConfig = field(default_factory=EnvSwitchConfig)
    learner: DeviceConfig = field(default_factory=DeviceConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    off_policy: OffPolicyLoopConfig = field(default_factory=OffPolicyLoopConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sac_drq: Any = _algo_default("sac_drq")
    ppo: Any = _algo_default("ppo")
    dqn: Any = _algo_default("dqn")
    tune: dict = field(default_factory=dict)
    """Tune settings (search space, scheduler, stoppers) read by `distracer tune`; ignored by `train`."""

    MOVED: ClassVar[dict[str, str]] = {
        "resources.fragment_length": "off_policy.fragment_length",
        "resources.weights_every": "off_policy.weights_interval",
    }
    """Settings that moved to another section (old dotted path -> new); the old paths still load, with a note."""

    @property
    def algo_config(self) -> Any:
        """The config section of the chosen algorithm."""
        return getattr(self, self.algo)

    def validate(self) -> TrainConfig:
        if self.algo not in ALGOS:
            raise ConfigError(f"algo={self.algo!r} is unknown; allowed: {', '.join(ALGOS)}")
        if self.total_env_steps < 1:
            raise ConfigError(f"total_env_steps={self.total_env_steps} must be >= 1")
        if self.seed < 0 or self.seed >= self.eval.seed:
            raise ConfigError(f"seed={self.seed} must be in [0, eval.seed={self.eval.seed}) so eval tracks stay unseen")
        for section in (self.env, self.learner, self.resources, self.off_policy, self.replay, self.eval,
                        self.checkpoint):
            section.validate()
        self.env_switch.validate(self.env)
        algo = spec(self.algo)
        self.algo_config.derive(self.total_env_steps, self.resources.num_workers * self.resources.envs_per_worker)
        self.algo_config.validate()
        if algo.action_space is not None and self.env.action_space != algo.action_space:
            raise ConfigError(f"algo={self.algo} needs {algo.action_space} actions; "
                              f"set env.action_space={algo.action_space}")
        if self.algo == "ppo" and self.env.action_space == "discrete":
            for name in ("log_std_final", "accel_log_std_init"):
                if getattr(self.ppo, name) is not None:
                    raise ConfigError(f"ppo.{name} sets a Gaussian's std; env.action_space=discrete has none "
                                      "(set it to null, or train continuous actions)")
        if algo.off_policy and self.replay.num_shards > self.resources.num_workers:
            raise ConfigError(f"replay.num_shards={self.replay.num_shards} exceeds resources.num_workers="
                              f"{self.resources.num_workers}; each shard needs a worker writing to it")
        if self.env.channel_order != "first":
            raise ConfigError("env.channel_order=last is for SB3 interop; the learners take channel-first observations")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Loading


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Coerce a YAML value to the field's annotated type, or raise a one-line ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}={value!r} has the wrong type")
    if hint is Any:
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} must be a list")
        inner = typing.get_args(hint)[:1] or (Any,)
        items = [_check_type(v, inner[0], key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            value = _yaml11_float(value, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):  # a NaN passes every `< 0` check and poisons the first loss
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def _yaml11_float(text: str, key: str) -> Any:
    """YAML 1.1 (PyYAML) reads `1e-3` as a string (it wants `1.0e-3`); take it as the number it means."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        raise ConfigError(f"{key}={text!r} must be a finite number")
    return number


_NOTED_RENAMES: set[str] = set()


def _current_names(config: Any, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`data` with the old names a config class lists in its RENAMED (old -> new) replaced by the new ones, and a
    one-line deprecation note (once per process and name) on stderr. Old names keep loading: YAML files,
    `--set` overrides and the configs saved in checkpoints written before the rename."""
    renamed: dict[str, str] = getattr(type(config), "RENAMED", {})
    if not any(key in renamed for key in data):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        new = renamed.get(key, key)
        if new != key:
            _note_renamed(f"{prefix}{key}", f"{prefix}{new}", both_given=new in data)
        out[new] = value
    return out


def _note_renamed(old: str, new: str, both_given: bool) -> None:
    """The one-line deprecation note for an old name (once per process and name), or a one-line error when the
    old name and the new one are both given."""
    if both_given:
        raise ConfigError(f"{old} and {new} are the same setting (the old name and the new); keep {new}")
    # A when_algo block is checked under its own prefix, then applied at the top level: one setting, one note.
    setting = old.split(".", 2)[2] if old.startswith(f"{WHEN_ALGO}.") else old
    if setting not in _NOTED_RENAMES:
        _NOTED_RENAMES.add(setting)
        print(f"distracer: note: {old} is now called {new}; the old name still loads", file=sys.stderr)


def _moved_to_their_sections(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (a whole TrainConfig dict) with the settings of TrainConfig.MOVED under their new paths, with the
    same one-line note as a rename."""
    for old, new in TrainConfig.MOVED.items():
        old_section, old_key = old.split(".")
        section = data.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        new_section, new_key = new.split(".")
        target = data.get(new_section)
        _note_renamed(old, new, both_given=isinstance(target, dict) and new_key in target)
        data = {**data, old_section: {k: v for k, v in section.items() if k != old_key},
                new_section: {**(target if isinstance(target, dict) else {}), new_key: section[old_key]}}
    return data


def current_names(data: Any, config: Any = None, prefix: str = "") -> Any:
    """`data` (a TrainConfig-shaped dict: one layer, a file or the `--set` overrides) with every old name of
    TrainConfig.MOVED and the sections' RENAMED replaced by the new one, with the one-line note. Done per layer
    before layers merge, so a later layer's old name overrides an earlier layer's new one, as later layers do."""
    if not isinstance(data, dict):
        return data
    if config is None:  # a whole TrainConfig dict (`prefix` names where it comes from, e.g. a when_algo block)
        config, data = TrainConfig(), _moved_to_their_sections(data)
    data = _current_names(config, data, prefix)
    return {key: current_names(value, getattr(config, key), f"{prefix}{key}.")
            if dataclasses.is_dataclass(getattr(config, key, None)) else value for key, value in data.items()}


def apply_dict(config: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """Set the fields of dataclass `config` from `data`, recursively and strictly (old names of renamed
    fields are taken, with a note)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    data = _current_names(config, data, prefix)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{full}: unknown key; allowed: {', '.join(names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, f"{full}.")
        elif isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
        else:
            setattr(config, key, _check_type(value, hints.get(key, Any), full))
    return config


def read_yaml(path: str | Path, algo: str | None = None) -> dict[str, Any]:
    """Read a config YAML, resolving `extends:` (a path or list of paths, relative to the file) first.

    With `algo`, each file's `when_algo.<algo>` block is merged right after that file's own settings (so files
    layered or extended later still win over it) and the blocks are dropped; without it they are kept, merged.
    """
    return _merge_layers(_file_layers(Path(path), ()), algo)


def _file_layers(path: Path, seen: tuple[Path, ...]) -> list[tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
    """One (settings, checked when_algo blocks) pair per file, in the order they apply: the files `path` extends
    (recursively) first, then `path` itself. Old names are already renamed to the current ones."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {str(path)!r} extends itself")
    data = load_yaml(path.read_text(), f"config file {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    parents = data.pop("extends", []) or []
    layers = []
    for parent in [parents] if isinstance(parents, str) else parents:
        layers += _file_layers(path.parent / parent, (*seen, path.resolve()))
    blocks = check_when_algo(data.pop(WHEN_ALGO, {}), str(path))
    return [*layers, (current_names(data), blocks)]


def _block_for(blocks: dict[str, dict[str, Any]], algo: Any) -> dict[str, Any]:
    """`algo`'s `when_algo` block ({} for none). An algo that is not a string (`--set algo=[]`) has none; the
    config's own check of `algo` then refuses it in one line."""
    return blocks.get(algo, {}) if isinstance(algo, str) else {}


def _merge_layers(layers: list[tuple[dict[str, Any], dict[str, dict[str, Any]]]], algo: str | None) -> dict[str, Any]:
    """Layers merged in order, each followed by its block for `algo`; with `algo` None the blocks are kept,
    merged, under `when_algo`."""
    data: dict[str, Any] = {}
    for settings, blocks in layers:
        data = deep_merge(data, settings)
        if algo is not None:
            data = deep_merge(data, _block_for(blocks, algo))
        elif blocks:
            data = deep_merge(data, {WHEN_ALGO: blocks})
    return data


def read_layers(paths: list[str] | tuple[str, ...] | str | None, given: dict[str, Any]) -> dict[str, Any]:
    """Config files layered in order (later ones win), each followed by its `when_algo` block for the algorithm
    trained, then `given` (the parsed `--set` overrides) over all. The algorithm is the one `given` or the files
    name (TrainConfig's default otherwise). Each file is read once."""
    if isinstance(paths, str):
        paths = [paths]
    layers = [layer for path in paths or [] for layer in _file_layers(Path(path), ())]
    named = [settings["algo"] for settings, _ in layers if "algo" in settings]
    algo = given.get("algo", named[-1] if named else TrainConfig.algo)
    return deep_merge(_merge_layers(layers, algo), current_names(given))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict[str, Any]:
    """'sac_drq.batch_size=128' -> {'sac_drq': {'batch_size': 128}}; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return nest_dotted({key.strip(): value})


def nest_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """{'sac_drq.actor_lr': 1e-4} -> {'sac_drq': {'actor_lr': 1e-4}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


WHEN_ALGO = "when_algo"
"""Top-level YAML key of settings that suit one algorithm only, outside its own section: `when_algo: {sac_drq:
{env: {frame_stack: 2}}}` applies when sac_drq is trained (tune_configs/cpu.yaml's CPU settings)."""
_NOT_IN_A_BLOCK = ("algo", "tune", WHEN_ALGO, "extends")


def check_when_algo(blocks: Any, where: str = "config") -> dict[str, dict[str, Any]]:
    """A `when_algo` value checked in one line: a mapping of known algorithm names to settings that a config of
    that algorithm accepts (every block, not only the trained algorithm's, so a typo shows at once)."""
    blocks = {} if blocks is None else blocks
    if not isinstance(blocks, dict):
        raise ConfigError(f"{where}: {WHEN_ALGO} must map algorithm names to mappings of settings, got {blocks!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, block in blocks.items():
        block = {} if block is None else block
        if name not in ALGOS:
            raise ConfigError(f"{where}: {WHEN_ALGO}.{name}: unknown algorithm; allowed: {', '.join(ALGOS)}")
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: {WHEN_ALGO} must map algorithm names to mappings of settings, "
                              f"got {WHEN_ALGO}.{name}={block!r}")
        for key in _NOT_IN_A_BLOCK:
            if key in block:
                raise ConfigError(f"{where}: {WHEN_ALGO}.{name}.{key}: not settable per algorithm")
        try:
            block = current_names(block, prefix=f"{WHEN_ALGO}.{name}.")
            apply_dict(TrainConfig(algo=name), copy.deepcopy(block), f"{WHEN_ALGO}.{name}.")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        out[name] = block
    return out


def resolve_when_algo(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (one dict, e.g. a Tune trial's or a checkpoint's) in current names, with its `when_algo` block for its
    algorithm merged over it and the blocks dropped. Files go through `read_layers`, which applies each file's
    block in its place."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    blocks = check_when_algo(data.pop(WHEN_ALGO, None))  # renamed, as the data are below: a block wins either way
    return deep_merge(current_names(data), _block_for(blocks, data.get("algo", TrainConfig.algo)))


def load_config(
    paths: list[str] | tuple[str, ...] | str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """YAML files (later ones win, each with its `when_algo` block for the algorithm trained), then `key=value`
    overrides, into a validated TrainConfig."""
    given: dict[str, Any] = {}
    for item in overrides or []:
        given = deep_merge(given, parse_override(item))
    return config_from_dict(read_layers(paths, given))


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from a plain (possibly nested) dict, e.g. a checkpoint's or Tune's (a `when_algo`
    block in it is resolved for its algorithm)."""
    if isinstance(data, dict):  # anything else gets apply_dict's one-line error
        data = resolve_when_algo(data)
    return apply_dict(TrainConfig(), data).validate()
