"""Where a PPO run's exploration size comes from, checkpoint by checkpoint.

gSDE's action std is the policy latent's norm times exp(log_std) (SB3's StateDependentNoiseDistribution,
full_std, learn_features=False): it grows when the head's activations grow even if the loss lowers log_std.
This prints, for each checkpoint of a run, on the same observations (the last checkpoint driving one stock
episode deterministically, on an evaluation seed no training used): the mean latent L2 norm, exp(log_std)'s
root mean square per control, the mean action std per control and the mean |action mean| per control; then one
JSON line. Used for docs/RESULTS.md.

    .venv/bin/python benchmarks/policy_noise.py RUN_DIR/ppo/seed1 [--frames 800] [--seed 1001000999]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distracer.checkpoint import learner_from_checkpoint, list_checkpoints
from distracer.envs import make_env


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a `distracer train` run directory (with checkpoints/)")
    parser.add_argument("--frames", type=int, default=800, help="agent steps of the episode observed")
    parser.add_argument("--seed", type=int, default=1_001_000_999, help="the episode's track (an eval seed)")
    args = parser.parse_args(argv)
    checkpoints = list_checkpoints(args.run_dir / "checkpoints")
    if not checkpoints:
        raise SystemExit(f"policy_noise: no checkpoints under {str(args.run_dir / 'checkpoints')!r}")
    obs = observations(checkpoints[-1], args.seed, args.frames)
    print(f"policy_noise: {len(checkpoints)} checkpoint(s), {len(obs)} observations (seed {args.seed})")
    print("checkpoint | latent L2 norm | exp(log_std) rms | action std | |action mean|")
    rows = [noise_row(path, obs) for path in checkpoints]
    for row in rows:
        print(f"{row['checkpoint']} | {row['latent_norm']:.3f} | {row['exp_log_std']} | {row['action_std']} | "
              f"{row['abs_action_mean']}")
    print(json.dumps({"run_dir": str(args.run_dir), "seed": args.seed, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
