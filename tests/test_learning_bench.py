"""benchmarks/learning.py's pure pieces: argument checks, recipe -> command lines, snapshot facts, CSV, FrameSkip.

Seconds in all: no training, no Ray, no CarRacing.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import learning as bench  # noqa: E402


def fail_line(capsys, argv: list[str]) -> str:
    """Run the benchmark's main on argv, expecting the one-line refusal with exit status 2."""
    code = None
    try:
        code = bench.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("learning.py: error: ")
    return lines[0]


# ----- arguments ---------------------------------------------------------------------------------------------
def test_unknown_recipe_lists_the_allowed_ones(capsys, tmp_path):
    line = fail_line(capsys, ["--recipe", "ppo", "--recipe", "a2c", "--out", str(tmp_path / "o")])
    assert "unknown recipe 'a2c'" in line
    assert f"allowed: {', '.join(bench.RECIPES)}" in line and "sb3_ppo_zoo" in line


@pytest.mark.parametrize("args, words", [
    (["--minutes", "0"], "--minutes 0 must be > 0"),
    (["--minutes", "-1"], "--minutes -1 must be > 0"),
    (["--minutes", "5", "--interval", "10"], "--interval 10 is longer than --minutes 5"),
    (["--interval", "0"], "--interval 0 must be > 0"),
    (["--episodes", "0"], "--episodes 0 must be >= 1"),
    (["--eval-workers", "0"], "--eval-workers 0 must be >= 1"),
    (["--seeds", "1", "999999"], "--seeds 999999 is out of range"),
    (["--set", "ppo.learning_rate"], "--set 'ppo.learning_rate' must look like key.path=value"),
    (["--minutes", "abc"], "invalid float value"),
])
def test_bad_arguments_refused_in_one_line(capsys, tmp_path, args, words):
    line = fail_line(capsys, ["--recipe", bench.PEER, "--out", str(tmp_path / "o"), *args])
    assert words in line
    assert not (tmp_path / "o").exists()  # nothing started, nothing written


def test_output_dir_with_curves_refused_unless_eval_only(capsys, tmp_path):
    (tmp_path / "curves.csv").write_text("recipe\n")
    line = fail_line(capsys, ["--recipe", bench.PEER, "--out", str(tmp_path)])
    assert "already holds curves.csv" in line
    plan = bench.make_plan(bench.build_parser().parse_args(["--eval-only", str(tmp_path)]))
    assert plan.eval_only == tmp_path.resolve() and plan.out == tmp_path.resolve()
    assert not plan.recipes_given


def test_eval_only_needs_a_directory(capsys, tmp_path):
    line = fail_line(capsys, ["--eval-only", str(tmp_path / "nope")])
    assert "is not a directory" in line


def test_plan_defaults(tmp_path):
    args = bench.build_parser().parse_args(["--recipe", bench.PEER, "--recipe", bench.PEER, "--seeds", "2", "1", "2",
                                            "--out", str(tmp_path / "o")])
    plan = bench.make_plan(args)
    assert plan.recipes == [bench.PEER] and plan.seeds == [2, 1]
    assert (plan.minutes, plan.interval, plan.episodes, plan.pin) == (30.0, 5.0, 10, False)
    assert plan.eval_workers == len(bench.usable_cpus())


# ----- recipes -> command lines ------------------------------------------------------------------------------
def test_distracer_recipe_command_line():
    run_dir = Path("/out/ppo/seed2")
    cmd = bench.distracer_command(bench.RECIPES["ppo"], 2, run_dir, 30.0, 5.0, ["ppo.learning_rate=1e-4"])
    assert cmd == [sys.executable, "-m", "distracer", "train",
                   "--config", "tune_configs/ppo.yaml", "--config", "tune_configs/cpu.yaml",
                   "--set", "seed=2", "--set", "run_dir=/out/ppo/seed2", "--set", "max_minutes=30",
                   "--set", "checkpoint.every_minutes=5", "--set", "checkpoint.keep=1000",
                   "--set", "eval.every_env_steps=0",
                   "--set", "checkpoint.every_env_steps=1000000000", "--set", "eval.episodes=1",
                   "--set", "ppo.learning_rate=1e-4"]


@pytest.mark.parametrize("name, configs", [
    ("ppo", ["tune_configs/ppo.yaml", "tune_configs/cpu.yaml"]),
    ("sac_drq", ["tune_configs/sac_drq.yaml", "tune_configs/cpu.yaml"]),
    ("dqn", ["tune_configs/dqn.yaml", "tune_configs/cpu.yaml"]),
    ("ppo_laptop", ["tune_configs/ppo.yaml", "tune_configs/laptop.yaml"]),
])
def test_recipe_table(name, configs):
    cmd = bench.run_command(name, 1, Path("/o"), 1.5, 0.5, [], threads=2)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--config"] == configs
    assert "max_minutes=1.5" in cmd and "checkpoint.every_minutes=0.5" in cmd


def test_recipe_config_files_exist():
    for name, recipe in bench.RECIPES.items():
        for config in recipe.configs:
            assert (bench.REPO / config).is_file(), f"recipe {name}: {config} is missing"


def test_recipe_overrides_come_after_the_benchmarks_own():
    cmd = bench.run_command("ppo_no_progress", 1, Path("/o"), 30.0, 10.0, ["seed=9"], threads=2)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets[-4:] == ["env.no_progress_frames=100", "env.no_progress_penalty=-100", "env.standstill_frames=0",
                         "seed=9"]


def test_peer_command_runs_this_file_with_its_spec():
    cmd = bench.run_command(bench.PEER, 3, Path("/o/sb3/seed3"), 30.0, 5.0, ["ppo.learning_rate=1"], threads=1)
    assert cmd[:2] == [sys.executable, str(BENCHMARKS / "learning.py")] and cmd[2] == "--train-peer"
    assert json.loads(cmd[3]) == {"seed": 3, "run_dir": "/o/sb3/seed3", "minutes": 30.0, "interval": 5.0,
                                  "threads": 1}  # --set overrides are for distracer recipes only


def test_run_specs_and_slots(tmp_path):
    args = bench.build_parser().parse_args(["--recipe", bench.PEER, "--seeds", "1", "2", "--out", str(tmp_path)])
    specs = bench.run_specs(bench.make_plan(args), threads=2)
    assert [(s.recipe, s.seed, s.run_dir) for s in specs] == [
        (bench.PEER, 1, tmp_path / bench.PEER / "seed1"), (bench.PEER, 2, tmp_path / bench.PEER / "seed2")]
    assert bench.cpu_slots(False) == [None]
    assert bench.cpu_slots(True) == [{c} for c in bench.usable_cpus()]


# ----- training subprocesses (tiny python commands standing in for runs) -------------------------------------
def fake_spec(tmp_path: Path, code: str, recipe: str = "ppo") -> bench.RunSpec:
    return bench.RunSpec(recipe, 1, tmp_path / recipe / "seed1", [sys.executable, "-c", code])


def test_failed_run_reported_with_its_log_and_the_others_go_on(tmp_path, capsys):
    bad = fake_spec(tmp_path, "print('loading'); raise SystemExit('boom: bad thing')")
    good = fake_spec(tmp_path, "print('fine')", recipe=bench.PEER)
    outcomes = bench.run_trainings([bad, good], [None], timeout_s=60, poll_s=0.05)
    assert [(o["recipe"], o["status"], o["returncode"]) for o in outcomes] == [("ppo", "failed", 1),
                                                                                (bench.PEER, "failed", 0)]
    assert "boom: bad thing" in outcomes[0]["log_tail"]
    assert json.loads((bad.run_dir / "run.json").read_text())["status"] == "failed"
    log = (bad.run_dir / "train.log").read_text()
    assert log.startswith("$ " + sys.executable) and "loading" in log
    assert "boom: bad thing" in capsys.readouterr().out


def test_run_past_its_time_is_stopped(tmp_path):
    spec = fake_spec(tmp_path, "import time; print('started', flush=True); time.sleep(60)")
    fake_checkpoint(spec.run_dir, 100, 10.0, 1)  # it left a snapshot: partial, not failed
    [outcome] = bench.run_trainings([spec], [None], timeout_s=0.5, poll_s=0.05)
    assert outcome["timed_out"] and outcome["status"] == "partial" and outcome["returncode"] != 0
    assert outcome["process_seconds"] < 30


def test_pinned_run_gets_one_core(tmp_path):
    core = bench.usable_cpus()[-1]
    spec = fake_spec(tmp_path, "import os; print('affinity', sorted(os.sched_getaffinity(0)))")
    bench.run_trainings([spec], [{core}], timeout_s=60, poll_s=0.05)
    assert f"affinity [{core}]" in (spec.run_dir / "train.log").read_text()


# ----- snapshots ---------------------------------------------------------------------------------------------
def fake_checkpoint(root: Path, steps: int, wall: float, repeat: int | None) -> Path:
    ckpt = root / "checkpoints" / f"ckpt_{steps:012d}"
    ckpt.mkdir(parents=True)
    config = {"algo": "ppo", "env": {"action_repeat": repeat}} if repeat is not None else {"algo": "ppo"}
    state = {"format": "distracer-checkpoint", "counters": {"env_steps": steps, "wall_seconds": wall},
             "config": config}
    (ckpt / "state.json").write_text(json.dumps(state))
    (ckpt / "MANIFEST.json").write_text("{}")
    return ckpt


def test_distracer_snapshot_facts(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 12_288, 301.5, repeat=2)
    snap = bench.read_distracer_snapshot(ckpt)
    assert (snap.kind, snap.path, snap.wall_seconds, snap.agent_steps, snap.env_frames) == (
        "distracer", ckpt, 301.5, 12_288, 24_576)
    assert bench.read_distracer_snapshot(fake_checkpoint(tmp_path, 5, 1.0, repeat=None)).env_frames == 5


def test_distracer_snapshots_listed_in_step_order_without_half_written_ones(tmp_path):
    fake_checkpoint(tmp_path, 200, 20.0, 1)
    fake_checkpoint(tmp_path, 100, 10.0, 1)
    half = tmp_path / "checkpoints" / ".ckpt_000000000300.tmp-1-2"
    half.mkdir()
    (tmp_path / "checkpoints" / "ckpt_000000000400").mkdir()  # no manifest yet
    assert [s.agent_steps for s in bench.list_snapshots(tmp_path, "distracer")] == [100, 200]


def test_peer_snapshot_facts(tmp_path):
    snap_dir = tmp_path / "snapshots"
    snap_dir.mkdir()
    for steps, wall in ((8192, 120.0), (4096, 60.0)):
        (snap_dir / f"step_{steps:012d}.zip").write_bytes(b"zip")
        (snap_dir / f"step_{steps:012d}.json").write_text(json.dumps(
            {"agent_steps": steps, "wall_seconds": wall, "action_repeat": 2, "env_frames": 2 * steps}))
    (snap_dir / "step_000000009999.json").write_text(json.dumps({"agent_steps": 9999, "wall_seconds": 1}))  # no zip
    snaps = bench.list_snapshots(tmp_path, "peer")
    assert [(s.kind, s.path.name, s.wall_seconds, s.agent_steps, s.env_frames) for s in snaps] == [
        ("peer", "step_000000004096.zip", 60.0, 4096, 8192), ("peer", "step_000000008192.zip", 120.0, 8192, 16384)]


def test_peer_snapshot_written_with_its_sidecar(tmp_path):
    class Model:
        def save(self, path: str) -> None:
            Path(path).write_bytes(b"zip")

    bench.write_peer_snapshot(Model(), tmp_path / "snapshots", 4096, 61.25, 70.0)
    [snap] = bench.list_snapshots(tmp_path, "peer")
    assert (snap.agent_steps, snap.wall_seconds, snap.env_frames) == (4096, 61.25, 8192)


def test_discover_runs_reads_status(tmp_path):
    run = tmp_path / "ppo" / "seed1"
    fake_checkpoint(run, 100, 10.0, 1)
    (run / "run.json").write_text(json.dumps({"status": "partial", "returncode": -15}))
    (tmp_path / bench.PEER / "seed1").mkdir(parents=True)  # a run that left no snapshot
    (tmp_path / "not_a_recipe" / "seed1").mkdir(parents=True)
    runs = bench.discover_runs(tmp_path, None)
    assert [(r.recipe, r.seed, r.status) for r in runs] == [("ppo", 1, "partial"), (bench.PEER, 1, "failed")]
    assert [r.recipe for r in bench.discover_runs(tmp_path, ["ppo"])] == ["ppo"]


def test_discover_runs_finds_a_renamed_recipes_snapshots(tmp_path):
    fake_checkpoint(tmp_path / "ppo_since_renamed" / "seed2", 100, 10.0, 2)
    [run] = bench.discover_runs(tmp_path, None)
    assert (run.recipe, run.seed, run.status, run.kind) == ("ppo_since_renamed", 2, "ok", "distracer")
    assert [s.agent_steps for s in bench.list_snapshots(run.run_dir, run.kind)] == [100]


# ----- curves ------------------------------------------------------------------------------------------------
def rows() -> list:
    R = bench.CurveRow
    return [R("ppo", 1, "checkpoints/ckpt_000000000100", 60.0, 100, 100, 10.0, 1.0, 2, "ok", 0.0, 12.5),
            R("ppo", 1, "checkpoints/ckpt_000000000200", 120.0, 200, 200, 30.0, 2.0, 2, "ok", 1.0, 3.0),
            R("ppo", 2, "checkpoints/ckpt_000000000150", 60.0, 150, 150, 20.0, 1.0, 2, "partial", 0.0, 40.0),
            R("ppo", 2, "checkpoints/ckpt_000000000250", 120.0, 250, 250, 50.0, 1.0, 2, "partial", 2.0, 0.0),
            R(bench.PEER, 1, "snapshots/step_000000000100.zip", 60.0, 200, 100, -10.0, 3.0, 2, "ok"),
            R(bench.PEER, 1, "snapshots/step_000000000300.zip", 120.0, 600, 300, 80.0, 3.0, 2, "ok"),
            R(bench.PEER, 1, "snapshots/step_000000000400.zip", 130.0, 800, 400, float("nan"), float("nan"), 0, "ok")]


def test_csv_columns_and_values(tmp_path):
    path = tmp_path / "curves.csv"
    bench.write_csv(path, rows())
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ("recipe", "seed", "snapshot", "wall_seconds", "env_frames", "agent_steps",
                                            "eval_mean", "eval_std", "episodes", "status", "laps_finished",
                                            "tiles_missed_median")
        first = next(reader)
    assert first == {"recipe": "ppo", "seed": "1", "snapshot": "checkpoints/ckpt_000000000100",
                     "wall_seconds": "60.0", "env_frames": "100", "agent_steps": "100", "eval_mean": "10.00",
                     "eval_std": "1.00", "episodes": "2", "status": "ok", "laps_finished": "0",
                     "tiles_missed_median": "12.5"}
    back = bench.read_csv(path)
    assert [r.status for r in back] == [r.status for r in rows()]
    assert back[1] == rows()[1] and np.isnan(back[-1].eval_mean)
    assert np.isnan(back[-1].laps_finished)  # the peer's tiles are not known


def test_finals_and_ratio_to_peer():
    finals = bench.recipe_finals(rows())
    assert finals["ppo"]["final_mean"] == 40.0 and finals["ppo"]["seeds"] == 2
    assert (finals["ppo"]["seed_min"], finals["ppo"]["seed_max"]) == (30.0, 50.0)
    assert finals[bench.PEER]["final_mean"] == 80.0  # the unscored last snapshot does not count
    assert bench.ratios_to_peer(finals) == {"ppo": 0.5}
    assert bench.ratios_to_peer({"ppo": finals["ppo"]}) == {}
    finals[bench.PEER]["final_mean"] = -5.0
    assert bench.ratios_to_peer(finals) == {"ppo": None}


def test_plot_writes_a_png(tmp_path):
    out = bench.plot_curves(rows(), tmp_path / "curves.png", budget_minutes=2.0)
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench.plot_curves([], tmp_path / "none.png") is None


# ----- the peer's FrameSkip ----------------------------------------------------------------------------------
class CountingEnv(gym.Env):
    """Reward = step number (1, 2, 3...); terminates after `length` steps."""

    observation_space = gym.spaces.Box(0, 255, (2, 2, 1), np.uint8)
    action_space = gym.spaces.Box(-1, 1, (3,), np.float32)

    def __init__(self, length: int = 100):
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((2, 2, 1), np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.full((2, 2, 1), self.t, np.uint8), float(self.t), self.t >= self.length, False, {"t": self.t}


def test_frame_skip_sums_rewards_over_two_steps():
    env = bench.FrameSkip(CountingEnv(), skip=2)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.float32))
    assert reward == 1.0 + 2.0 and info["t"] == 2 and obs[0, 0, 0] == 2 and not terminated
    _, reward, *_ = env.step(np.zeros(3, np.float32))
    assert reward == 3.0 + 4.0


def test_frame_skip_stops_at_the_episode_end():
    env = bench.FrameSkip(CountingEnv(length=3), skip=2)
    env.reset(seed=0)
    env.step(np.zeros(3, np.float32))
    _, reward, terminated, _, info = env.step(np.zeros(3, np.float32))
    assert (reward, terminated, info["t"]) == (3.0, True, 3)


def test_linear_schedule_is_rl_zoos():
    schedule = bench.LinearSchedule(1e-4)
    assert schedule(1.0) == 1e-4 and schedule(0.5) == 5e-5 and schedule(0.0) == 0.0


def test_eval_only_reuses_scores_of_the_same_snapshots_and_seeds(tmp_path):
    """An extended run's dir: its old snapshots were scored on these seeds; only the new one is scored again."""
    def snap(name: str) -> bench.Snapshot:
        return bench.Snapshot("distracer", tmp_path / "ppo" / "seed2" / "checkpoints" / name, 60.0, 4096, 8192)

    old, damaged, new = snap("ckpt_000000004096"), snap("ckpt_000000008192"), snap("ckpt_000000012288")
    seeds = bench.eval_seeds(3)
    (tmp_path / "evals.json").write_text(json.dumps({
        bench._short(old.path): {"seeds": seeds, "returns": [1.0, 2.0, 3.0], "lengths": [1000] * 3, "errors": []},
        bench._short(damaged.path): {"seeds": seeds, "returns": [1.0, 2.0], "lengths": [1000] * 2,
                                     "errors": ["boom"]},
    }))
    plan = bench.make_plan(bench.build_parser().parse_args(["--eval-only", str(tmp_path), "--episodes", "3"]))
    known = bench.scored_before(plan, [old, damaged, new])
    assert list(known) == [old.path]
    assert [(r.task.seed, r.ret, r.length) for r in known[old.path]] == list(zip(seeds, [1.0, 2.0, 3.0], [1000] * 3))
    other_seeds = bench.make_plan(bench.build_parser().parse_args(["--eval-only", str(tmp_path), "--episodes", "5"]))
    assert bench.scored_before(other_seeds, [old]) == {}  # other seeds: scored again


def test_every_recipe_is_a_valid_config():
    from distracer.config import load_config

    configs = {name: load_config([str(bench.REPO / c) for c in recipe.configs], list(recipe.overrides))
               for name, recipe in bench.RECIPES.items() if not recipe.peer}  # ConfigError if one is not valid
    config = configs["ppo_two_phase"]
    assert (config.env_switch.at_budget, config.env_switch.switched(config.env).standstill_frames) == (0.75, 0)
    assert config.env.standstill_frames > 0  # on until the switch
    # The file users layer is the measured recipe: lr to 0 over the budget, the skip penalty, and (as on seed 3)
    # 10-episode evaluations every 200k agent steps keeping best/; learning.py's own runs turn those off.
    assert (config.ppo.lr_horizon, config.env.skip_penalty) == ("budget", -20.0)
    assert (config.eval.every_env_steps, config.eval.episodes, config.checkpoint.keep_best) == (200_000, 10, True)
    command = bench.distracer_command(bench.RECIPES["ppo_two_phase"], 3, Path("/o"), 120.0, 15.0)
    assert "eval.every_env_steps=0" in command
    assert (config.max_minutes, config.run_dir) == (120.0, "runs/ppo_two_phase")
    # Every 15-minute snapshot of the budget survives pruning: no step checkpoints counting against `keep`.
    ckpt = config.checkpoint
    assert ckpt.every_env_steps > config.total_env_steps and ckpt.keep * ckpt.every_minutes >= config.max_minutes
    # The `ppo` default trains with the skip penalty (ppo_gaussian_skip, measured); every recipe measured before it
    # became the default keeps it off, so re-running one measures what was measured.
    assert configs["ppo"].env.skip_penalty == configs["ppo_gaussian_skip"].env.skip_penalty == -20.0
    assert configs["ppo"].ppo.use_sde == configs["ppo_gaussian_skip"].ppo.use_sde is False
    for name in ("ppo_gaussian", "ppo_gaussian_budget_lr", "ppo_gaussian_ar4", "ppo_gsde", "ppo_laptop"):
        assert configs[name].env.skip_penalty == 0.0, name
    # The default starts accel's noise small and has no KL early stop (`ppo_accel_std_no_kl`, measured); every recipe
    # measured before that keeps what it had: accel's noise as steering's, and the cpu preset's target_kl of the time.
    assert (configs["ppo"].ppo.accel_log_std_init, configs["ppo"].ppo.target_kl) == (-3.0, None)
    assert configs["ppo_accel_std_no_kl"] == configs["ppo"]
    # The recipes with accel's noise started small, each with its target_kl.
    accel_noise_kl = {"ppo": None, "ppo_accel_std_no_kl": None, "ppo_accel_std": 0.05, "ppo_two_phase_accel_std": None,
                      "ppo_lap_end": None}
    for name, config in configs.items():
        if config.algo != "ppo":
            continue
        if name in accel_noise_kl:
            assert (config.ppo.accel_log_std_init, config.ppo.target_kl) == (-3.0, accel_noise_kl[name]), name
        else:
            assert config.ppo.accel_log_std_init is None, name
            assert config.ppo.target_kl == (None if name == "ppo_laptop" else 0.05), name  # laptop.yaml never had one
    # The long-budget recipe with the default's noise: ppo_two_phase's schedule and switch, Gaussian noise.
    two_phase_accel = configs["ppo_two_phase_accel_std"]
    assert (two_phase_accel.ppo.use_sde, two_phase_accel.ppo.lr_horizon) == (False, "budget")
    assert two_phase_accel.env_switch == configs["ppo_two_phase"].env_switch


def test_curve_rows_count_laps_finished_and_tiles_missed(tmp_path):
    run = bench.RunInfo("ppo", 1, tmp_path, "ok")
    snap = bench.Snapshot("distracer", tmp_path / "checkpoints" / "ckpt_1", 60.0, 100, 200)
    peer = bench.Snapshot("peer", tmp_path / "snapshots" / "step_1.zip", 60.0, 100, 200)

    def result(path, missed):
        return [bench.EpisodeResult(bench.EpisodeTask("distracer", str(path), i), 900.0, 700, 1.0,
                                    tiles_missed=m) for i, m in enumerate(missed)]

    results = {snap.path: result(snap.path, [0, 3, 0, 9]), peer.path: result(peer.path, [-1, -1])}
    ours, theirs = bench.curve_rows(run, [snap, peer], results)
    assert (ours.laps_finished, ours.tiles_missed_median) == (2.0, 1.5)
    assert np.isnan(theirs.laps_finished) and np.isnan(theirs.tiles_missed_median)  # not known for the peer
