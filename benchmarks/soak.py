"""Soak: memory of a long laptop-preset run whose replay fills early. Flat after the fill, or a leak.

Runs `distracer train` with tune_configs/<algo>.yaml + tune_configs/laptop.yaml and a small replay budget
(so the replay is full after a few minutes and every later byte of growth is something else) for --minutes
of wall-clock, in a session of its own (its embedded Ray's raylet, GCS, workers and actors are all its
descendants). Every --sample seconds it sums the PSS of that process tree (/proc/PID/smaps_rollup: shared
pages counted once, as laptop_memory.py does) and reads the replay fill from the run's progress line. Each
minute's row is that minute's largest sample, with the PSS of each role (driver, learner, worker, shard,
raylet, GCS, other) in it, so a growth can be traced to a process.

Judged (see `judge`): the growth from the first steady minute after the replay filled to the end, in MB per
minute (a least-squares slope) and in all, and the same over the second half of those minutes; the target is
"flat" (under 1% of the PSS at the fill) or "step, then flat" (a bounded step, then under 1% over the second
half); "grows" is what a leak looks like. Also reported: what the laptop preset can give its replay in 6 GB, i.e. the
4 GB target less the PSS the run holds beside a full replay (the measured PSS after the fill less the
replay budget, assuming a full replay holds its budget: the sizing's own rule).

    python benchmarks/soak.py [--algo sac_drq] [--minutes 30] [--replay-budget 16MB] [--out docs/results/soak.csv]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_info, print_json_last  # noqa: E402
from laptop_memory import GB, pss_bytes  # noqa: E402

MB = 1e6
TARGET_BYTES = 4 * GB
FILL = re.compile(r"replay (\d+)%")


def command(algo: str, minutes: float, budget: str, run_dir: Path) -> list[str]:
    overrides = [f"max_minutes={minutes:g}", "total_env_steps=1000000000", f"replay.ram_budget={budget}",
                 f"run_dir={run_dir}", "eval.episodes=1", "eval.select_episodes=0", "checkpoint.keep=1"]
    return ([sys.executable, "-m", "distracer", "train", "-c", f"tune_configs/{algo}.yaml", "-c",
             "tune_configs/laptop.yaml"] + [x for o in overrides for x in ("--set", o)])


def follow_fill(stream, state: dict) -> None:
    """Read the run's output; keep the newest replay fill (percent) and the whole log."""
    for line in stream:
        state["log"].append(line)
        match = FILL.search(line)
        if match:
            state["fill"] = int(match.group(1))


ROLES = ("driver", "learner", "worker", "shard", "raylet", "gcs", "other")
"""What each process of the run is, from its title (Ray names actor processes `ray::<Class>`)."""


def role_of(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    for key, role in (("LearnerActor", "learner"), ("RolloutWorker", "worker"), ("ReplayShard", "shard"),
                      ("raylet", "raylet"), ("gcs_server", "gcs"), ("distracer train", "driver")):
        if key in title:
            return role
    return "other"


def tree_pss_by_role(root: psutil.Process) -> tuple[int, int, dict[str, int]]:
    """Summed PSS of `root` and its descendants, how many processes, and the PSS of each role."""
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, {}
    by_role = dict.fromkeys(ROLES, 0)
    for proc in procs:
        by_role[role_of(proc)] += pss_bytes(proc.pid)
    return sum(by_role.values()), len(procs), by_role


def soak(algo: str, minutes: float, budget: str, sample_s: float) -> tuple[list[dict], str, int]:
    """Rows of (minute, pss_bytes, processes, replay_fill_pct) and the run's log and exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(command(algo, minutes, budget, Path(tmp) / "run"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        state: dict = {"fill": None, "log": []}
        reader = threading.Thread(target=follow_fill, args=(proc.stdout, state), daemon=True)
        reader.start()
        root, start, rows = psutil.Process(proc.pid), time.time(), {}
        while proc.poll() is None:
            pss, count, by_role = tree_pss_by_role(root)
            minute = int((time.time() - start) // 60) + 1
            row = rows.setdefault(minute, {"minute": minute, "pss_bytes": 0, "processes": 0, "replay_fill_pct": None,
                                           **{f"pss_{r}": 0 for r in ROLES}})
            if pss > row["pss_bytes"]:  # the minute's largest sample, with its breakdown
                row.update(pss_bytes=pss, processes=count, **{f"pss_{r}": b for r, b in by_role.items()})
            row["replay_fill_pct"] = state["fill"]
            time.sleep(sample_s)
        reader.join(timeout=10)
        return [rows[m] for m in sorted(rows)], "".join(state["log"]), proc.returncode


FULL_PCT = 90
"""The progress line's replay fill counts transitions over capacity in entries: the reset frame that starts each
episode is an entry but no transition, and with lz4 the frame arena can evict before the entry ring is full. A
full, wrapped replay reads 93-98% (measured on the laptop preset), never 100%."""


def judge(rows: list[dict], budget_bytes: int, from_minute: int = 0) -> dict:
    """Growth after the replay filled, over the steady minutes: the first minute (start-up) and the minutes with
    more processes than most (the closing evaluation's task) are left out, as is the last (shutdown).

    "flat": under 1% growth from the first full minute to the end. "step, then flat": more than that in all, but
    under 1% over the second half of those minutes (a bounded step, e.g. Ray's object store filling to its
    cap, then nothing). "grows": growth over the second half too, what a leak looks like."""
    counts = [r["processes"] for r in rows]
    steady = max(set(counts), key=counts.count)
    body = [r for r in rows[1:-1] if r["processes"] == steady and r["minute"] >= from_minute]
    full = [r for r in body if (r["replay_fill_pct"] or 0) >= FULL_PCT]
    if len(full) < 6:
        return {"filled_at_minute": full[0]["minute"] if full else None, "verdict": "replay did not fill early enough"}
    minutes = np.array([r["minute"] for r in full], float)
    pss = np.array([r["pss_bytes"] for r in full], float)
    half = len(full) // 2
    slope = float(np.polyfit(minutes, pss, 1)[0])
    late_slope = float(np.polyfit(minutes[half:], pss[half:], 1)[0])
    growth, late_growth = float(pss[-1] - pss[0]), float(pss[-1] - pss[half])
    verdict = ("flat" if growth < 0.01 * pss[0] else
               "step, then flat" if late_growth < 0.01 * pss[half] and late_slope * len(full[half:]) < 0.01 * pss[half]
               else "grows")
    overhead = float(np.median(pss[half:])) - budget_bytes
    return {
        "filled_at_minute": int(minutes[0]), "steady_processes": steady, "pss_at_fill_bytes": float(pss[0]),
        "pss_end_bytes": float(pss[-1]), "growth_after_fill_bytes": growth, "slope_bytes_per_min": slope,
        "second_half_from_minute": int(minutes[half]), "second_half_growth_bytes": late_growth,
        "second_half_slope_bytes_per_min": late_slope, "verdict": verdict,
        "overhead_beside_replay_bytes": overhead,
        "laptop_replay_budget_bytes": max(0.0, TARGET_BYTES - overhead),
    }


def print_verdict(v: dict) -> None:
    if "slope_bytes_per_min" not in v:
        print(f"soak: {v['verdict']}")
        return
    print(f"soak: replay full from minute {v['filled_at_minute']}; after it PSS moved "
          f"{v['growth_after_fill_bytes'] / MB:+.1f} MB ({v['slope_bytes_per_min'] / MB:+.2f} MB/min), from minute "
          f"{v['second_half_from_minute']} {v['second_half_growth_bytes'] / MB:+.1f} MB "
          f"({v['second_half_slope_bytes_per_min'] / MB:+.2f} MB/min): {v['verdict']}; beside the replay the run "
          f"holds {v['overhead_beside_replay_bytes'] / GB:.2f} GB, "
          f"so a 6 GB laptop (4 GB target) can give the replay {v['laptop_replay_budget_bytes'] / GB:.2f} GB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="sac_drq", choices=["sac_drq", "dqn"])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--replay-budget", default="16MB", help="small, so the replay fills in the first minutes")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between PSS samples")
    parser.add_argument("--out", default=None, help="CSV of the per-minute rows")
    parser.add_argument("--rejudge", default=None, metavar="JSON",
                        help="judge the rows of an earlier soak's JSON line again (no run)")
    parser.add_argument("--from-minute", type=int, default=0,
                        help="with --rejudge: judge from this minute on (e.g. after other processes that shared the "
                             "run's libraries, and so its PSS, had ended)")
    args = parser.parse_args()
    from distracer.replay.sizing import parse_bytes

    if args.rejudge:
        earlier = json.loads(Path(args.rejudge).read_text().strip().splitlines()[-1])
        verdict = judge(earlier["rows"], parse_bytes(earlier["replay_budget"]), args.from_minute)
        print_verdict(verdict)
        print_json_last({**earlier, **verdict, "rejudged": True, "from_minute": args.from_minute})
        return

    info = machine_info()
    print(f"soak: {info}; {args.algo} laptop preset, replay {args.replay_budget}, {args.minutes:g} min", flush=True)
    rows, log, status = soak(args.algo, args.minutes, args.replay_budget, args.sample)
    if status != 0:  # the minutes measured still count: report them, marked failed, and judge nothing
        print(log[-3000:])
        print(f"soak: the run failed (exit {status}); its {len(rows)} measured minute(s) follow, unjudged")
    for r in rows:
        roles = "  ".join(f"{role} {r.get(f'pss_{role}', 0) / MB:5.0f}" for role in ROLES)
        print(f"minute {r['minute']:3d}  PSS {r['pss_bytes'] / GB:6.3f} GB  {r['processes']:3d} processes  "
              f"(MB: {roles})  "
              f"replay {r['replay_fill_pct'] if r['replay_fill_pct'] is not None else '-'}%")
    verdict = judge(rows, parse_bytes(args.replay_budget)) if status == 0 else {"verdict": f"run failed ({status})"}
    print_verdict(verdict)
    if args.out and rows:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print_json_last({"benchmark": "soak", "machine": {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
                     "algo": args.algo, "minutes": args.minutes, "replay_budget": args.replay_budget,
                     "exit_status": status, "rows": rows, **verdict})
    if status != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
