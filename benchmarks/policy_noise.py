"""Where a PPO run's exploration size comes from, checkpoint by checkpoint.

gSDE's action std is the policy latent's norm times exp(log_std) (SB3's StateDependentNoiseDistribution,
full_std, learn_features=False): it grows when the head's activations grow even if the loss lowers log_std.
This prints, for each checkpoint of a run, on the same observations (the last checkpoint driving one stock
episode deterministically, on an evaluation seed no training used): the mean latent L2 norm, exp(log_std)'s
root mean square per control, the mean action std per control and the mean |action mean| per control; then one
JSON line. Used for docs/RESULTS.md.

With `--episodes N` it also drives each checkpoint on N stock episodes (evaluation seeds from 1001000000, as
`benchmarks/learning.py` scores snapshots) twice: deterministically, as every score is taken, and with the noise it
trained with, on the same tracks. The ratio says how much of the training return the deterministic policy keeps;
the noisy figure is a diagnostic, never a score.

    .venv/bin/python benchmarks/policy_noise.py RUN_DIR/ppo/seed1 [--frames 800] [--seed 1001000999]
    .venv/bin/python benchmarks/policy_noise.py RUN_DIR/ppo/seed1 --episodes 10 [--only ckpt_000000385024]
"""

from __future__ import annotations

import argparse
import json
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from learning import eval_seeds

from distracer.algos import build_policy
from distracer.algos.base import PolicyWeights
from distracer.checkpoint import learner_from_checkpoint, list_checkpoints
from distracer.envs import make_env
from distracer.evaluate import distracer_act_fn, load_for_evaluation, run_episode


def observations(checkpoint: Path, seed: int, agent_steps: int) -> torch.Tensor:
    """uint8 (N, C, H, W): what the checkpoint's deterministic policy sees over one episode (N <= agent_steps)."""
    learner, config, _ = learner_from_checkpoint(checkpoint)
    env = make_env(config.env)
    obs, _ = env.reset(seed=seed)
    seen = []
    for _ in range(agent_steps):
        seen.append(torch.as_tensor(np.asarray(obs))[None])
        action, _ = learner.policy.act(seen[-1], explore=False)
        obs, _, terminated, truncated, _ = env.step(action[0].numpy())
        if terminated or truncated:
            break
    env.close()
    return torch.cat(seen)


def noise_row(checkpoint: Path, obs: torch.Tensor) -> dict[str, object]:
    """The exploration's parts for one checkpoint on `obs`."""
    learner, _, _ = learner_from_checkpoint(checkpoint)
    policy = learner.policy
    if not policy.continuous:
        raise SystemExit(f"policy_noise: {str(checkpoint)!r} has discrete actions; nothing to measure")
    with torch.no_grad():
        head, _ = policy(obs)
        sigma = policy.log_std.float().exp()
        sigma_rms = (sigma**2).mean(0).sqrt() if policy.use_sde else sigma
        return {"checkpoint": checkpoint.name, "latent_norm": float(head.latent.norm(dim=-1).mean()),
                "exp_log_std": [round(float(x), 4) for x in sigma_rms],
                "action_std": [round(float(x), 4) for x in policy.distribution(head).stddev.mean(0)],
                "abs_action_mean": [round(float(x), 4) for x in head.out.abs().mean(0)]}


def noisy_act_fn(weights: PolicyWeights, seed: int):
    """The policy acting with its training noise, seeded by `seed`. Gaussian noise is as in training; gSDE draws
    fresh noise matrices every step here (`PPOPolicy.act`), not every `sde_sample_freq` steps."""
    policy = build_policy(weights, device="cpu")
    policy.set_seed(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = policy.act(torch.as_tensor(obs[None]), explore=True)
        return action[0].numpy()

    return act


def episode(task: tuple[Path, str, int, int | None]) -> tuple[str, str, int, float, int]:
    """One stock episode of one checkpoint, `mode` 'deterministic' or 'noisy', cut at `max_steps` agent steps when
    set (tests): (checkpoint, mode, seed, return, tiles missed)."""
    checkpoint, mode, seed, max_steps = task
    torch.set_num_threads(1)
    loaded = load_for_evaluation(checkpoint)
    weights = loaded.source.weights
    act = distracer_act_fn(weights) if mode == "deterministic" else noisy_act_fn(weights, seed)
    result = run_episode(act, loaded.env_config, seed, max_steps=max_steps)
    return checkpoint.name, mode, seed, result.ret, result.tiles_missed


def score_rows(checkpoints: list[Path], episodes: int, workers: int,
               max_steps: int | None = None) -> list[dict[str, object]]:
    """Per checkpoint: deterministic and noisy returns and tiles missed on the same `episodes` tracks."""
    seeds = eval_seeds(episodes)
    tasks = [(path, mode, seed, max_steps)
             for path in checkpoints for mode in ("deterministic", "noisy") for seed in seeds]
    with Pool(workers) as pool:
        done = pool.map(episode, tasks)
    rows = []
    for path in checkpoints:
        row: dict[str, object] = {"checkpoint": path.name}
        for mode in ("deterministic", "noisy"):
            mine = [d for d in done if d[0] == path.name and d[1] == mode]
            row[mode] = {"returns": [d[3] for d in mine], "tiles_missed": [d[4] for d in mine]}
        rows.append(row)
    return rows


def print_scores(rows: list[dict[str, object]]) -> None:
    print("checkpoint | deterministic: mean ± std (median tiles missed) | with training noise | noisy / deterministic")
    for row in rows:
        det, noisy = (np.array(row[m]["returns"]) for m in ("deterministic", "noisy"))
        missed = [int(np.median(row[m]["tiles_missed"])) for m in ("deterministic", "noisy")]
        print(f"{row['checkpoint']} | {det.mean():.1f} ± {det.std():.1f} ({missed[0]}) | "
              f"{noisy.mean():.1f} ± {noisy.std():.1f} ({missed[1]}) | {noisy.mean() / det.mean():.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a `distracer train` run directory (with checkpoints/)")
    parser.add_argument("--frames", type=int, default=800, help="agent steps of the episode observed")
    parser.add_argument("--seed", type=int, default=1_001_000_999, help="the episode's track (an eval seed)")
    parser.add_argument("--episodes", type=int, default=0,
                        help="also score each checkpoint on this many tracks, deterministic and noisy (0: don't)")
    parser.add_argument("--only", nargs="+", default=None, help="checkpoint names to keep (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="processes for --episodes")
    args = parser.parse_args(argv)
    if args.episodes < 0 or args.workers < 1:
        raise SystemExit("policy_noise: --episodes must be >= 0 and --workers >= 1")
    checkpoints = list_checkpoints(args.run_dir / "checkpoints")
    if args.only:
        missing = set(args.only) - {p.name for p in checkpoints}
        if missing:
            raise SystemExit(f"policy_noise: no checkpoint(s) {sorted(missing)} under {str(args.run_dir)!r}")
        checkpoints = [p for p in checkpoints if p.name in args.only]
    if not checkpoints:
        raise SystemExit(f"policy_noise: no checkpoints under {str(args.run_dir / 'checkpoints')!r}")
    obs = observations(checkpoints[-1], args.seed, args.frames)
    print(f"policy_noise: {len(checkpoints)} checkpoint(s), {len(obs)} observations (seed {args.seed})")
    print("checkpoint | latent L2 norm | exp(log_std) rms | action std | |action mean|")
    rows = [noise_row(path, obs) for path in checkpoints]
    for row in rows:
        print(f"{row['checkpoint']} | {row['latent_norm']:.3f} | {row['exp_log_std']} | {row['action_std']} | "
              f"{row['abs_action_mean']}")
    scores = score_rows(checkpoints, args.episodes, args.workers) if args.episodes else []
    if scores:
        print_scores(scores)
    print(json.dumps({"run_dir": str(args.run_dir), "seed": args.seed, "rows": rows, "scores": scores}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
