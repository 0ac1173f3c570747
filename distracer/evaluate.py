"""Evaluation on the reference environment: the unmodified CarRacing-v3 episode return.

Always the stock simulator, a deterministic policy, and seeds training never uses. Scores are the raw
env return recorded by `RecordEpisodeStatistics` beneath every wrapper (action repeat sums the same
rewards, so the running score drawn on videos ends on the same number).

Two users:
- the training driver's periodic evaluation: `evaluate_policy(weights, env_config, seeds)`;
- `distracer evaluate`: a distracer checkpoint (train / Tune / job) or an SB3 `.zip`, many episodes in
  parallel as Ray tasks, optional videos, a JSON report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distracer.algos import build_policy
from distracer.algos.base import PolicyWeights
from distracer.checkpoint import learner_from_checkpoint, refuse_inside_checkpoint
from distracer.envs import STOCK_ID, EnvConfig, make_env
from distracer.envs.wrappers import STANDSTILL_SPEED, car_speed
from distracer.errors import ConfigError

# Default evaluation seeds start this far above the run's eval.seed: beyond the periodic evaluations'
# seeds (eval.seed + 1000 x weights version), so a final score is never on tracks used to pick a checkpoint.
TEST_SEED_OFFSET = 1_000_000_000
SOLVED_SCORE = 900.0
SOLVED_EPISODES = 100
RENDER_FPS = 50  # CarRacing-v3's metadata["render_fps"]

# A stop this long (2 s of simulated time) is worth a word in the episode's log line.
STANDSTILL_REPORT_FRAMES = 100

ActFn = Callable[[np.ndarray], np.ndarray]
"""One channel-first uint8 observation -> one env action, deterministic."""


@dataclass
class EvalResult:
    """Per-episode reference returns and lengths, with their seeds."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    standstill: list[int] = field(default_factory=list)
    """Per episode, the longest time the car stood still (hull speed < 1 m/s), in frames: why a policy that
    drives can still score little (it braked to a halt and stayed)."""
    tiles_missed: list[int] = field(default_factory=list)
    """Per episode, the track tiles never visited. CarRacing-v3 ends an episode before frame 1,000 only once
    every tile is visited, so a car that laps fast but cut a corner runs on at -0.1 a frame to the time limit."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    def merge(self, other: EvalResult) -> EvalResult:
        return EvalResult(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def sorted(self) -> EvalResult:
        """Episodes in seed order (parallel tasks finish in any order)."""
        order = [int(i) for i in np.argsort(self.seeds, kind="stable")]

        def pick(values: list) -> list:
            return [values[i] for i in order] if len(values) == len(order) else list(values)

        return EvalResult(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})

    @property
    def laps_finished(self) -> int:
        """Episodes in which every tile was visited (the laps that can score 900: CarRacing-v3 ends those early)."""
        return sum(1 for missed in self.tiles_missed if missed == 0)

    @property
    def median_tiles_missed(self) -> float:
        return float(np.median(self.tiles_missed)) if self.tiles_missed else float("nan")

    def summary(self) -> str:
        """'852.8 ± 90.4 over 100 episodes, 44/100 laps finished (tiles missed: median 1)'."""
        line = f"{self.mean:.1f} ± {self.std:.1f} over {len(self.returns)} episodes"
        if len(self.tiles_missed) == len(self.returns) and self.returns:
            line += (f", {self.laps_finished}/{len(self.returns)} laps finished "
                     f"(tiles missed: median {self.median_tiles_missed:g})")
        return line


# ----------------------------------------------------------------------------------------------------
# Policies, from either source, rebuilt inside whichever process runs the episodes


@dataclass
class PolicySource:
    """What an evaluation task needs to rebuild the acting policy in its own process (picklable)."""

    weights: PolicyWeights | None = None
    sb3: Any = None  # distracer.sb3_interop.SB3Bundle

    def act_fn(self) -> ActFn:
        if self.weights is not None:
            return distracer_act_fn(self.weights)
        return self.sb3.act_fn()


def distracer_act_fn(weights: PolicyWeights) -> ActFn:
    policy = build_policy(weights, device="cpu")

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            action, _ = policy.act(torch.as_tensor(obs[None]), explore=False)
        return action.numpy()[0]

    return act


# ----------------------------------------------------------------------------------------------------
# Episodes


@dataclass
class VideoOptions:
    side_by_side: bool = False
    label: str = ""


@dataclass
class Episode:
    seed: int
    ret: float
    length: int
    seconds: float
    video: bytes | None = None
    standstill: int = 0  # longest standstill, frames (sampled once per agent step)
    tiles_missed: int = 0  # track tiles never visited


def run_episode(act: ActFn, env_config: EnvConfig, seed: int, video_path: Path | None = None,
                video: VideoOptions | None = None, max_steps: int | None = None, stock: bool = True) -> Episode:
    """One deterministic episode on the stock env; `max_steps` (agent steps) cuts it short for smoke tests.
    `stock=False` runs distracer's fast simulator, whose episodes are the stock env's frame for frame
    (tests/test_fast_env.py): for picking among checkpoints (`runtime.selection`), never for a score."""
    from distracer.video import EpisodeVideo

    start = time.perf_counter()
    env = make_env(env_config, seed=seed, stock=stock, render_mode="rgb_array" if video_path else None)
    recorder = None
    if video_path is not None:
        video = video or VideoOptions()
        # One video frame per agent step: with action repeat k the clip plays at 50/k fps, i.e. in real time.
        recorder = EpisodeVideo(video_path, RENDER_FPS / env_config.action_repeat, video.side_by_side,
                                env_config.grayscale, video.label)
    try:
        obs, _ = env.reset()
        score, steps, info = 0.0, 0, {}
        still = longest_still = 0  # agent steps
        if recorder is not None:
            recorder.add(env.render(), obs, score, steps)
        while True:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            score += float(reward)
            steps += 1
            still = still + 1 if car_speed(env) < STANDSTILL_SPEED else 0
            longest_still = max(longest_still, still)
            if recorder is not None:
                recorder.add(env.render(), obs, score, steps)
            if terminated or truncated or (max_steps is not None and steps >= max_steps):
                break
        tiles_missed = len(env.unwrapped.track) - env.unwrapped.tile_visited_count
    finally:
        env.close()
        if recorder is not None:
            recorder.close()
    if "episode" in info:  # the env's own bookkeeping, beneath every wrapper
        ret, length = float(np.asarray(info["episode"]["r"]).item()), int(np.asarray(info["episode"]["l"]).item())
    else:  # cut short by max_steps: not a CarRacing score
        ret, length = score, steps * env_config.action_repeat
    return Episode(seed, ret, length, time.perf_counter() - start,
                   standstill=longest_still * env_config.action_repeat, tiles_missed=tiles_missed)


def run_episodes(source: PolicySource | PolicyWeights, env_config: EnvConfig, seeds: list[int],
                 video_dir: str | Path | None = None, video: VideoOptions | None = None,
                 max_steps: int | None = None, return_video_bytes: bool = False, stock: bool = True) -> list[Episode]:
    """Episodes for `seeds` in this process; videos go to `video_dir` (or come back as bytes)."""
    torch.set_num_threads(1)
    if isinstance(source, PolicyWeights):
        source = PolicySource(weights=source)
    act = source.act_fn()
    out = []
    for seed in seeds:
        path = Path(video_dir) / video_name(seed) if video_dir is not None else None
        episode = run_episode(act, env_config, seed, path, video, max_steps, stock)
        if path is not None and return_video_bytes:
            episode.video = path.read_bytes()
            path.unlink()
        out.append(episode)
    return out


def video_name(seed: int) -> str:
    return f"episode_seed{seed}.mp4"


def evaluate_policy(weights: PolicyWeights | PolicySource, env_config: EnvConfig, seeds: list[int],
                    max_steps: int | None = None) -> EvalResult:
    """Run one deterministic episode on the stock env per seed (the driver's periodic evaluation)."""
    return to_result(run_episodes(weights, env_config, seeds, max_steps=max_steps))


def to_result(episodes: list[Episode]) -> EvalResult:
    return EvalResult([e.ret for e in episodes], [e.length for e in episodes], [e.seed for e in episodes],
                      [e.seconds for e in episodes], [e.standstill for e in episodes],
                      [e.tiles_missed for e in episodes])


def _remote_chunk(source: PolicySource, env_config: EnvConfig, seeds: list[int], with_video: bool,
                  video: VideoOptions | None, max_steps: int | None, stock: bool = True) -> list[Episode]:
    """A Ray task: videos are written to this node's temp dir and returned as bytes, so evaluation on a
    cluster still leaves every video in the --video dir of the machine that asked for them."""
    if not with_video:
        return run_episodes(source, env_config, seeds, max_steps=max_steps, stock=stock)
    with tempfile.TemporaryDirectory(prefix="distracer-video-") as tmp:
        return run_episodes(source, env_config, seeds, tmp, video, max_steps, return_video_bytes=True)


def evaluate_parallel(source: PolicySource, env_config: EnvConfig, seeds: list[int], workers: int,
                      video_dir: Path | None = None, video: VideoOptions | None = None,
                      max_steps: int | None = None, log: Callable[[str], None] = print,
                      stock: bool = True) -> EvalResult:
    """Episodes as Ray tasks (one CPU each, `workers` at a time), or in this process for 1 worker/episode.
    `stock=False`: the fast simulator (see `run_episode`)."""
    if workers <= 1 or len(seeds) <= 1:
        episodes = []
        for seed in seeds:
            [episode] = run_episodes(source, env_config, [seed], video_dir, video, max_steps, stock=stock)
            _log_episode(log, episode, len(episodes) + 1, len(seeds))
            episodes.append(episode)
        return to_result(episodes).sorted()
    import ray

    task = ray.remote(num_cpus=1, max_retries=1)(_remote_chunk)
    source_ref = ray.put(source)  # the weights / model bytes enter the object store once, not once per task
    # Small chunks (about 4 per worker) so a slow chunk at the end does not keep the other workers idle.
    size = max(1, math.ceil(len(seeds) / (4 * workers)))
    pending = [task.remote(source_ref, env_config, seeds[i:i + size], video_dir is not None, video, max_steps, stock)
               for i in range(0, len(seeds), size)]
    episodes: list[Episode] = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for episode in ray.get(done[0]):
            if episode.video is not None and video_dir is not None:
                from distracer.atomic import write_bytes_atomically

                write_bytes_atomically(video_dir / video_name(episode.seed), episode.video)
                episode.video = None
            episodes.append(episode)
            _log_episode(log, episode, len(episodes), len(seeds))
    return to_result(episodes).sorted()


def _log_episode(log: Callable[[str], None], episode: Episode, k: int, n: int) -> None:
    stood = f", stood still {episode.standstill} frames" if episode.standstill >= STANDSTILL_REPORT_FRAMES else ""
    missed = f", missed {episode.tiles_missed} tiles" if episode.tiles_missed else ""
    log(f"  [{k}/{n}] seed {episode.seed}: return {episode.ret:7.1f}  ({episode.length} steps, "
        f"{episode.seconds:.1f} s{stood}{missed})")


# ----------------------------------------------------------------------------------------------------
# Checkpoints of any kind -> a policy, its env, its seed range


@dataclass
class Loaded:
    """A policy ready to evaluate, with what the report needs to say about it."""

    fmt: str  # "distracer" or "sb3"
    algo: str
    path: Path
    source: PolicySource
    env_config: EnvConfig
    eval_seed: int  # first seed outside training's range
    info: dict[str, Any] = field(default_factory=dict)


def load_for_evaluation(path: str | Path, trust_pickle: bool = False, vecnorm: str | Path | None = None,
                        action_repeat: int | None = None, color: str | None = None) -> Loaded:
    """Detect the checkpoint's format and algorithm and build its policy and env config."""
    from distracer.checkpoint import detect_format

    fmt, found = detect_format(path)
    if fmt == "sb3":
        return _load_sb3(found, trust_pickle, vecnorm, action_repeat, color)
    if vecnorm is not None:
        raise ConfigError("--vecnorm is for SB3 .zip models; distracer checkpoints hold their own normalisation")
    if action_repeat is not None or color is not None:
        raise ConfigError("--action-repeat and --color are for SB3 .zip models; a distracer checkpoint uses its "
                          "saved env config")
    learner, config, ckpt = learner_from_checkpoint(found)
    counters = ckpt.state.get("counters", {})
    info = {"env_steps": counters.get("env_steps"), "num_updates": counters.get("num_updates"),
            "training_seed": config.seed, "periodic_eval_best": counters.get("best_eval")}
    return Loaded("distracer", config.algo, ckpt.path, PolicySource(weights=learner.policy_weights()), config.env,
                  config.eval.seed, info)


def _load_sb3(path: Path, trust_pickle: bool, vecnorm: str | Path | None, action_repeat: int | None,
              color: str | None = None) -> Loaded:
    from distracer.config import EvalConfig
    from distracer.sb3_interop import VECNORM_FILE, load_sb3_bundle, read_sb3_zip, sb3_env_config

    info = read_sb3_zip(path)
    env_config = sb3_env_config(info, action_repeat or 1, color)
    bundle = load_sb3_bundle(path, trust_pickle, vecnorm)
    used = vecnorm or (path.parent / VECNORM_FILE if bundle.vecnorm_bytes is not None else None)
    out = Loaded("sb3", info.algo, path, PolicySource(sb3=bundle), env_config, EvalConfig().seed,
                 {"training_seed": info.seed, "vecnormalize": str(used) if used else None})
    if bundle.replaced:
        out.info["replaced_training_objects"] = list(bundle.replaced)
    return out


def eval_seeds(loaded: Loaded, episodes: int, seed: int | None) -> list[int]:
    """Seeds for the episodes, refusing any in training's range [0, eval.seed)."""
    start = loaded.eval_seed + TEST_SEED_OFFSET if seed is None else seed
    first = loaded.eval_seed
    if start < first:
        raise ConfigError(f"--seed {start} is in the training seed range [0, {first}) of this checkpoint; "
                          f"evaluation seeds must be >= {first} (default {first + TEST_SEED_OFFSET})")
    return list(range(start, start + episodes))


# ----------------------------------------------------------------------------------------------------
# The command


def default_workers() -> int:
    """CPUs of the cluster when joining one, else of this machine (as this process may use them)."""
    import ray

    if ray.is_initialized():
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def evaluate_checkpoint(path: str | Path, episodes: int = 10, seed: int | None = None,
                        video_dir: str | Path | None = None, side_by_side: bool = False,
                        workers: int | None = None, trust_pickle: bool = False, vecnorm: str | Path | None = None,
                        action_repeat: int | None = None, max_steps: int | None = None, color: str | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """`distracer evaluate` as a function: returns the JSON report. Refuses bad input before any episode runs."""
    from distracer.video import check_video_dir

    if episodes < 1:
        raise ConfigError(f"--episodes {episodes} must be >= 1")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be >= 1")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps {max_steps} must be >= 1")
    if side_by_side and video_dir is None:
        raise ConfigError("--side-by-side needs --video DIR")
    if video_dir is not None:
        refuse_inside_checkpoint(video_dir, "--video")
    videos = check_video_dir(video_dir) if video_dir is not None else None
    loaded = load_for_evaluation(path, trust_pickle, vecnorm, action_repeat, color)
    seeds = eval_seeds(loaded, episodes, seed)
    if loaded.info.get("replaced_training_objects"):
        log("distracer: the SB3 zip's training-only objects (learning-rate and clip schedules) could not be "
            "unpickled and were replaced by constants; acting does not use them")

    t0 = time.perf_counter()  # wall time includes starting Ray: it is part of what the user waits for
    workers, started_ray = _start_workers(workers, episodes)
    label = f"{loaded.algo} {loaded.path.name}"
    log(f"distracer: evaluating {loaded.fmt} {loaded.algo} checkpoint {str(loaded.path)!r} on stock {STOCK_ID}: "
        f"{episodes} episode(s), seeds {seeds[0]}..{seeds[-1]}, {min(workers, episodes)} in parallel")
    if loaded.fmt == "sb3":  # what the zip could not say is the user's to check: print what was built
        env = loaded.env_config
        log(f"distracer: SB3 input: {env.frame_stack} {'grayscale' if env.grayscale else 'RGB'} frame(s) of "
            f"{env.frame_size}x{env.frame_size}, action repeat {env.action_repeat} (--color, --action-repeat)")
    if max_steps is not None:
        log(f"distracer: episodes cut at {max_steps} agent steps (--max-steps): the result is NOT a CarRacing score")
    try:
        result = evaluate_parallel(loaded.source, loaded.env_config, seeds, workers, videos,
                                   VideoOptions(side_by_side, label), max_steps, log)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    wall = time.perf_counter() - t0
    return _report(loaded, result, wall, workers, max_steps, videos)


def _start_workers(workers: int | None, episodes: int) -> tuple[int, bool]:
    """How many episodes run at once, starting (or joining) Ray when that is more than one.

    Returns (workers, whether this call started Ray). Joining: an initialised Ray or RAY_ADDRESS.
    """
    import ray

    from distracer.config import ResourcesConfig
    from distracer.ray_setup import init_ray

    if episodes == 1:
        return 1, False
    joining = ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
    if workers is None and not joining:
        workers = default_workers()
    if workers == 1:
        return 1, False
    started = init_ray(ResourcesConfig(local_num_cpus=workers))  # local_num_cpus is ignored when joining
    return workers or default_workers(), started


def _report(loaded: Loaded, result: EvalResult, wall: float, workers: int, max_steps: int | None,
            videos: Path | None) -> dict[str, Any]:
    n = len(result.returns)
    solved = max_steps is None and n >= SOLVED_EPISODES and result.mean >= SOLVED_SCORE
    return {
        "checkpoint": str(loaded.path), "format": loaded.fmt, "algo": loaded.algo, "env": STOCK_ID,
        # `fast` is left out: evaluation always runs the stock env, whatever training used.
        "env_config": {k: v for k, v in loaded.env_config.__dict__.items() if k != "fast"},
        "deterministic": True, "episodes": n,
        "seeds": result.seeds, "returns": result.returns, "lengths": result.lengths,
        "standstill_frames": result.standstill, "tiles_missed": result.tiles_missed,
        "episode_seconds": [round(s, 3) for s in result.seconds],
        "mean": result.mean, "std": result.std, "min": float(np.min(result.returns)),
        "max": float(np.max(result.returns)), "solved": solved, "max_steps": max_steps,
        "wall_seconds": round(wall, 2), "workers": workers, "checkpoint_info": loaded.info,
        "videos": [str(videos / video_name(s)) for s in result.seeds] if videos is not None else [],
    }


def _check_json_path(path: str | None) -> None:
    if path is None:
        return
    refuse_inside_checkpoint(path, "--json")
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--json {path!r}: directory {str(parent)!r} does not exist or is not writable")


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_json_path(args.json)
    report = evaluate_checkpoint(args.checkpoint, args.episodes, args.seed, args.video, args.side_by_side,
                                 args.workers, args.trust_pickle, args.vecnorm, args.action_repeat, args.max_steps,
                                 args.color)
    verdict = ""
    if report["max_steps"] is None:
        verdict = " (solved: >= 900 over 100+ episodes)" if report["solved"] else (
            "" if report["episodes"] >= SOLVED_EPISODES else " (a 'solved' claim needs 100 episodes)")
    print(f"distracer: {report['algo']} score {report['mean']:.1f} ± {report['std']:.1f} over {report['episodes']} "
          f"episodes (min {report['min']:.1f}, max {report['max']:.1f}){verdict}; {report['wall_seconds']:.0f} s")
    if report["videos"]:
        print(f"distracer: videos in {str(Path(report['videos'][0]).parent)!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"distracer: report written to {args.json}")
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on the stock CarRacing-v3 (deterministic, unseen seeds)")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="distracer checkpoint dir, run dir, Tune trial/checkpoint dir, or SB3 .zip")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (a 'solved' claim needs 100)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"first seed (default: the run's eval.seed + {TEST_SEED_OFFSET:,}); must be >= eval.seed")
    p.add_argument("--video", metavar="DIR", default=None, help="write one mp4 per episode into DIR")
    p.add_argument("--side-by-side", action="store_true", help="videos also show the agent's own 84x84 input")
    p.add_argument("--json", metavar="FILE", default=None, help="write the full report as JSON")
    p.add_argument("--workers", type=int, default=None,
                   help="episodes in parallel as Ray tasks (default: the CPUs available; 1 runs in this process)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading SB3 .zip / vecnormalize.pkl files, which unpickle Python objects")
    p.add_argument("--vecnorm", metavar="PATH", default=None,
                   help="SB3 VecNormalize stats (default: vecnormalize.pkl beside the .zip, if any)")
    p.add_argument("--color", choices=("gray", "rgb"), default=None,
                   help="SB3 .zip only: its frames are grayscale or RGB (asked when the channel count divides by 3)")
    p.add_argument("--action-repeat", type=int, default=None,
                   help="SB3 .zip only: the action repeat it was trained with (default 1)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="smoke tests only: stop each episode after N agent steps (then it is not a score)")
    p.set_defaults(func=cmd_evaluate)
