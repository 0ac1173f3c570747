"""Every bad input tried, and the line each gets: the table of docs/RELIABILITY.md, from real CLI runs.

Each case runs the real `python -m distracer ...` in a subprocess, in a temporary directory of its own (bad
configs, damaged checkpoints, bad Ray addresses, unwritable run directories), and records its exit status,
the `distracer: error:` line it printed and how many such lines there were. A case passes when the command
fails with exactly one error line that contains the expected words and no Python traceback.

    python benchmarks/bad_inputs.py [--markdown]

The last line is JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_info, print_json_last  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "total_env_steps=64", "--set", "env.frame_size=48", "--set", "eval.episodes=1",
        "--set", "eval.select_episodes=0",
        "--set", "resources.local_num_cpus=2", "--set", "resources.object_store_memory=200MB"]


@dataclass
class Case:
    kind: str
    what: str
    args: Callable[[Path], list[str]]
    """The distracer arguments, given the case's temporary directory (prepare files there)."""
    expect: str
    env: dict | None = None


def _checkpoint(tmp: Path, frame_size: int = 48) -> Path:
    """A real sealed checkpoint of a tiny PPO run (built once per case directory)."""
    from distracer.algos import ActionSpec
    from distracer.checkpoint import save_checkpoint
    from distracer.config import load_config
    from distracer.runtime.learner import build_learner

    config = load_config([str(REPO / "tune_configs/ppo.yaml")], [f"env.frame_size={frame_size}", "env.frame_stack=2",
                                                                  f"run_dir={tmp / 'run'}"])
    learner = build_learner(config, (2, frame_size, frame_size), ActionSpec("continuous", 2))
    state = {"algo": "ppo", "config": config.to_dict(), "counters": {"env_steps": 64}}
    return save_checkpoint(tmp / "run" / "checkpoints", learner.state_dict(), state, 64)


def _reseal(ckpt: Path) -> Path:
    """Checksums over the damaged contents: damage only loading itself can catch."""
    from distracer.checkpoint import write_manifest

    write_manifest(ckpt)
    return ckpt


def _damaged(tmp: Path, how: str) -> str:
    ckpt = _checkpoint(tmp)
    if how == "flip":
        data = bytearray((ckpt / "learner.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (ckpt / "learner.pt").write_bytes(bytes(data))
    elif how == "no_manifest":
        (ckpt / "MANIFEST.json").unlink()
    elif how == "state_not_json":
        (ckpt / "state.json").write_text("{ not json")
        _reseal(ckpt)
    elif how == "learner_garbage":
        (ckpt / "learner.pt").write_bytes(b"garbage")
        _reseal(ckpt)
    return str(ckpt)


def _yaml(tmp: Path, text: str) -> str:
    path = tmp / "bad.yaml"
    path.write_text(text)
    return str(path)


def _other_frame_size(tmp: Path) -> list[str]:
    ckpt = _checkpoint(tmp, frame_size=64)
    return ["train", "-c", "tune_configs/ppo.yaml", *TINY, "--set", "env.frame_stack=2", "--set",
            f"run_dir={tmp / 'run'}", "--resume", str(ckpt)]


def _resume_auto(tmp: Path, older_intact: bool) -> list[str]:
    """A run dir whose newest checkpoint has a flipped byte; with or without an intact older one."""
    import shutil

    ckpt = _checkpoint(tmp)
    newest = ckpt.with_name("ckpt_000000000128")
    shutil.copytree(ckpt, newest)
    data = bytearray((newest / "learner.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "learner.pt").write_bytes(bytes(data))
    if not older_intact:
        shutil.rmtree(ckpt)
    return ["train", "-c", "tune_configs/ppo.yaml", *TINY, "--set", "env.frame_stack=2",
            "--set", f"run_dir={tmp / 'run'}", "--resume", "auto"]


def _train(*sets: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["train", "-c", "tune_configs/ppo.yaml", *TINY, "--set", f"run_dir={tmp / 'run'}",
                        *[x for s in sets for x in ("--set", s)]]


SAC = ("algo=sac_drq", "resources.num_workers=1", "resources.shard_cpus=0")  # fits 2 CPUs: the budget is what is wrong
CASES = [
    Case("config", "a word where a number goes", _train("ppo.learning_rate=abc"), "ppo.learning_rate"),
    Case("config", "NaN", _train("ppo.learning_rate=.nan"), "finite"),
    Case("config", "zero workers", _train("resources.num_workers=0"), "num_workers"),
    Case("config", "an unknown key", _train("ppo.learning_rte=1e-4"), "learning_rte"),
    Case("config", "an unknown algorithm", _train("algo=a2c"), "a2c"),
    Case("config", "a missing config file", lambda tmp: ["train", "-c", str(tmp / "nope.yaml")], "nope.yaml"),
    Case("config", "a YAML syntax error", lambda tmp: ["train", "-c", _yaml(tmp, "ppo: {lr: [1,\n")], "bad.yaml"),
    Case("config", "a replay budget larger than RAM", _train(*SAC, "replay.ram_budget=100TB"), "exceeds"),
    Case("config", "a replay budget below one batch", _train(*SAC, "replay.ram_budget=20KB"), "batch"),
    Case("config", "a GPU the machine lacks", _train("resources.learner_gpus=1"), "GPU"),
    Case("config", "an object store larger than RAM", _train("resources.object_store_memory=500GB"), "object"),
    Case("config", "more CPUs than the machine has", _train("resources.num_workers=64"), "CPU"),
    Case("checkpoint", "a path that does not exist",
         lambda tmp: ["evaluate", "--checkpoint", str(tmp / "nothing"), "--episodes", "1"], "does not exist"),
    Case("checkpoint", "a file that is neither a checkpoint nor an SB3 zip",
         lambda tmp: ["evaluate", "--checkpoint", _yaml(tmp, "x"), "--episodes", "1"], "neither"),
    Case("checkpoint", "no MANIFEST (a write that never finished)",
         lambda tmp: ["evaluate", "--checkpoint", _damaged(tmp, "no_manifest"), "--episodes", "1"], "MANIFEST"),
    Case("checkpoint", "a flipped byte in learner.pt",
         lambda tmp: ["evaluate", "--checkpoint", _damaged(tmp, "flip"), "--episodes", "1"], "checksum"),
    Case("checkpoint", "state.json not JSON, manifest re-sealed",
         lambda tmp: ["evaluate", "--checkpoint", _damaged(tmp, "state_not_json"), "--episodes", "1"], "JSON"),
    Case("checkpoint", "learner.pt garbage, manifest re-sealed",
         lambda tmp: ["evaluate", "--checkpoint", _damaged(tmp, "learner_garbage"), "--episodes", "1"], "learner.pt"),
    Case("checkpoint", "resume with another frame size", _other_frame_size, "env"),
    Case("checkpoint", "--resume auto, newest damaged, an older one intact",
         lambda tmp: _resume_auto(tmp, older_intact=True), "resume_fallback"),
    Case("checkpoint", "--resume auto, no checkpoint intact", lambda tmp: _resume_auto(tmp, older_intact=False),
         "loads"),
    Case("address", "the dashboard URL as RAY_ADDRESS", _train("resources.connect_timeout_s=5"), "dashboard",
         env={"RAY_ADDRESS": "http://127.0.0.1:8265"}),
    Case("address", "a malformed address", _train("resources.address=not:an:address"), "address"),
    Case("address", "nothing listening", _train("resources.address=127.0.0.1:1", "resources.connect_timeout_s=5"),
         "127.0.0.1:1"),
    Case("run_dir", "an unwritable run directory", _train("run_dir=/proc/distracer"), "not writable"),
    Case("run_dir", "a run directory that is a file",
         lambda tmp: _train(f"run_dir={_yaml(tmp, 'x')}")(tmp), "not writable"),
]


def run_case(case: Case) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = case.args(Path(tmp))
        env = {**os.environ, **(case.env or {})}
        if case.env is None:
            env.pop("RAY_ADDRESS", None)
        proc = subprocess.run([sys.executable, "-m", "distracer", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("distracer: error:")]
    usage = [line for line in output.splitlines() if line.startswith("distracer: error") or "error:" in line[:40]]
    line = (errors or usage or [output.strip().splitlines()[-1] if output.strip() else ""])[0]
    ok = (proc.returncode != 0 and len(errors) == 1 and "Traceback" not in output
          and case.expect.lower() in line.lower())
    return {"kind": case.kind, "what": case.what, "args": " ".join(args), "exit": proc.returncode, "line": line,
            "error_lines": len(errors), "traceback": "Traceback" in output, "ok": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    info = machine_info()
    results = [run_case(case) for case in CASES]
    for r in results:
        if args.markdown:
            line = r["line"] if len(r["line"]) <= 220 else r["line"][:220] + " …"
            print(f"| {r['kind']} | {r['what']} | {r['exit']} | `{line.replace('|', '/')}` |")
        else:
            print(f"[{'ok' if r['ok'] else 'FAIL'}] {r['kind']:10s} {r['what']}: exit {r['exit']}: {r['line']}")
    failed = [r["what"] for r in results if not r["ok"]]
    print(f"bad_inputs: {len(results) - len(failed)}/{len(results)} one-line errors" +
          (f"; not: {', '.join(failed)}" if failed else ""))
    print_json_last({"benchmark": "bad_inputs", "machine": info, "results": results, "failed": failed})


if __name__ == "__main__":
    main()
