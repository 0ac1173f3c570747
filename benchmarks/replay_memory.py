"""Replay memory benchmark: resident bytes per stored transition, against the seed's 56,448 B layout.

Collects real CarRacing-v3 84x84 grayscale frames (stock simulator, a wandering gas-and-steer
policy), then fills a FrameReplay in a fresh subprocess per mode (uncompressed, lz4) past its
capacity, reusing the real frames with 1-pixel shifts so lz4 sees realistic content. The figure is
the growth of the child's PSS and RSS (/proc/self/smaps_rollup) from just before the replay is
built to after the fill, divided by the transitions held.

    python benchmarks/replay_memory.py [--capacity 50000] [--frames 3000]

Modes: uncompressed, lz4 (the default: high-compression level 1) and lz4-fast (lz4's fast mode).
Targets: <= 7,200 B a transition uncompressed, <= 2,000 B with lz4. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED_BYTES_PER_TRANSITION = 2 * 4 * 84 * 84  # stacked obs and next_obs, uint8: 56,448
TARGETS = {"uncompressed": 7200, "lz4": 2000, "lz4-fast": 2000}
MODES = {  # name: (compress, lz4_level)
    "uncompressed": (False, 0),
    "lz4": (True, 1),  # the default: lz4 high-compression level 1
    "lz4-fast": (True, 0),  # lz4's fast mode, for comparison
}
EPISODE_STEPS = 1000  # CarRacing-v3's time limit: episodes end by truncation here
FRAGMENT_LENGTH = 100
NUM_STREAMS = 4


def collect_frames(num_frames: int, seed: int = 0) -> np.ndarray:
    """Newest frames [N, 84, 84] from the stock env under a policy that drives, steers and leaves the track."""
    from distracer.envs import EnvConfig, make_env

    env = make_env(EnvConfig(fast=False), seed=seed)
    rng = np.random.default_rng(seed)
    frames, steer = [], 0.0
    obs, _ = env.reset()
    while len(frames) < num_frames:
        frames.append(obs[-1].copy())
        steer = float(np.clip(0.9 * steer + 0.3 * rng.normal(), -1, 1))
        obs, _, terminated, truncated, _ = env.step(np.array([steer, 0.2 + 0.3 * rng.random()], np.float32))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames)


def memory_kib() -> dict[str, int]:
    """This process's Rss and Pss in KiB (Linux smaps_rollup)."""
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0])
    return out


def fragments(frames: np.ndarray, total: int):
    """`total` entries in fragments of 4 interleaved streams, 1000-step episodes, shifted real frames."""
    from distracer.replay import Fragment

    rng = np.random.default_rng(1)
    per_stream = -(-total // NUM_STREAMS)
    for start in range(0, per_stream, FRAGMENT_LENGTH):
        for stream in range(NUM_STREAMS):
            steps = np.arange(start, min(start + FRAGMENT_LENGTH, per_stream))
            pos = steps % (EPISODE_STEPS + 1)  # entry 0 of each episode is its reset frame
            # Frame i of the pool on lap p, shifted by (p % 3 - 1) pixels: reused, never byte-identical.
            index = (steps * NUM_STREAMS + stream) % len(frames)
            lap = (steps * NUM_STREAMS + stream) // len(frames)
            batch = np.stack([np.roll(frames[i], int(p % 3) - 1, axis=1) for i, p in zip(index, lap)])
            n = len(steps)
            yield Fragment(
                stream_id=stream,
                frames=batch,
                actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32) * (pos > 0)[:, None],
                rewards=(rng.normal(size=n) * (pos > 0)).astype(np.float32),
                terminated=np.zeros(n, bool),
                truncated=pos == EPISODE_STEPS,
                first=pos == 0,
            )


def child(mode: str, frames_path: str, capacity: int) -> dict:
    """Runs in a fresh process: build, fill past capacity, measure."""
    from distracer.replay import FrameReplay

    frames = np.load(frames_path)
    before = memory_kib()
    compress, level = MODES[mode]
    replay = FrameReplay(capacity, (84, 84), (2,), np.float32, compress=compress, lz4_level=level, seed=0)
    total = int(capacity * 1.25)  # past capacity: the ring has wrapped and every page is touched
    fill_s = 0.0  # time inside replay.add only, not building the fragments
    for fragment in fragments(frames, total):  # generated lazily: their memory is not counted
        t0 = time.perf_counter()
        replay.add(fragment)
        fill_s += time.perf_counter() - t0
    del fragment
    after = memory_kib()
    n = len(replay)
    replay.sample(256)  # warm-up
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        replay.sample(256)
        times.append(time.perf_counter() - t0)
    sample_ms = float(np.median(times)) * 1e3
    result = {
        "mode": mode,
        "transitions": n,
        "capacity": capacity,
        "pss_bytes_per_transition": (after["pss"] - before["pss"]) * 1024 / n,
        "rss_bytes_per_transition": (after["rss"] - before["rss"]) * 1024 / n,
        "nbytes_per_transition": replay.nbytes / n,
        "insert_us_per_entry": fill_s / total * 1e6,
        "sample_ms_batch256_median": sample_ms,
    }
    if compress:
        result["compression_ratio"] = replay.stats()["compression_ratio"]
    return result


def run_child(mode: str, frames_path: str, capacity: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--frames-file", frames_path, "--capacity", str(capacity)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=50_000, help="transitions per replay")
    parser.add_argument("--frames", type=int, default=3000, help="real CarRacing frames to collect")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--frames-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.frames_file, args.capacity)))
        return

    t0 = time.perf_counter()
    frames = collect_frames(args.frames)
    print(f"collected {len(frames)} CarRacing-v3 frames {frames.shape[1:]} in {time.perf_counter() - t0:.0f} s")
    results = {"seed_bytes_per_transition": SEED_BYTES_PER_TRANSITION}
    with tempfile.TemporaryDirectory() as tmp:
        frames_path = os.path.join(tmp, "frames.npy")
        np.save(frames_path, frames)
        for mode in MODES:
            r = run_child(mode, frames_path, args.capacity)
            results[mode] = r
            per = r["pss_bytes_per_transition"]
            print(
                f"{mode:>12}: {per:,.0f} B/transition PSS ({r['rss_bytes_per_transition']:,.0f} RSS, "
                f"{r['nbytes_per_transition']:,.0f} nbytes) over {r['transitions']:,} transitions; "
                f"{SEED_BYTES_PER_TRANSITION / per:.1f}x smaller than the seed's {SEED_BYTES_PER_TRANSITION:,} B; "
                f"target <= {TARGETS[mode]:,} B: {'met' if per <= TARGETS[mode] else 'MISSED'}"
            )
            timing = (
                f"insert {r['insert_us_per_entry']:.1f} us/entry, sample(256) {r['sample_ms_batch256_median']:.1f} ms"
            )
            ratio = f", lz4 ratio {r['compression_ratio']:.2f}x" if "compression_ratio" in r else ""
            print(f"{'':>12}  {timing}{ratio}")
            results[mode]["ratio_to_seed"] = SEED_BYTES_PER_TRANSITION / per
    print(json.dumps(results))


if __name__ == "__main__":
    main()
