"""`ray job submit` of a short training to a real local Ray head with token authentication.

The head comes from cluster/start_local_head.sh (loopback only, its own temp dir and token file, free
ports) and is stopped with cluster/stop_local_head.sh, which stops that head and nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distracer.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TRAIN = [
    "env.frame_size=48", "eval.every_env_steps=0", "eval.episodes=1",
    "eval.select_episodes=0", "off_policy.fragment_length=16",
    "replay.ram_budget=64MB", "off_policy.weights_interval=10", "learner.device=cpu",
    "algo=sac_drq", "sac_drq.batch_size=16", "sac_drq.learning_starts=64", "sac_drq.replay_ratio=0.5",
    "total_env_steps=160", "checkpoint.every_env_steps=96",
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # the venv's `ray`, as the docs' activate does
    return env


@pytest.fixture
def local_head():
    """A head of our own: a short temp dir (Ray's socket paths are limited), a token file of its own."""
    temp_dir = tempfile.mkdtemp(prefix="drh.", dir="/tmp")
    token_file = os.path.join(temp_dir, "auth_token")
    start = subprocess.run(
        ["bash", str(REPO / "cluster/start_local_head.sh"), "--temp-dir", temp_dir, "--free-ports",
         "--token-file", token_file, "--num-cpus", "4", "--object-store-memory", str(200 * 1024**2)],
        capture_output=True, text=True, env=_env(), timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        head = dict(line.split("=", 1) for line in start.stdout.splitlines() if "=" in line)
        yield head
    finally:
        stop = subprocess.run(["bash", str(REPO / "cluster/stop_local_head.sh"), "--temp-dir", temp_dir, "--clean",
                               "--grace", "5"], capture_output=True, text=True, env=_env(), timeout=120)
        assert stop.returncode == 0, stop.stderr[-2000:]


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_job_submit_trains_with_token_auth(local_head, tmp_path):
    url = local_head["RAY_ADDRESS"]
    token = Path(local_head["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert _get(f"{url}/api/jobs/", None)[0] == 401  # no token: refused
    assert _get(f"{url}/api/jobs/", "not-the-token")[0] in (401, 403)

    run_dir = tmp_path / "jobrun"
    env = {**_env(), **{k: v for k, v in local_head.items() if k.startswith("RAY_")}}
    sets = [arg for item in TRAIN + [f"run_dir={run_dir}"] for arg in ("--set", item)]
    # cluster/runtime_env.yaml: the checkout as working_dir (.gitignore'd files and its excludes stay home).
    submit = subprocess.run(
        ["ray", "job", "submit", "--no-wait", "--submission-id", "distracer-test",
         "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "-m", "distracer", "train", *sets],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]

    deadline, status = time.time() + 400, None
    while time.time() < deadline:
        code, body = _get(f"{url}/api/jobs/distracer-test", token)
        assert code == 200
        status = json.loads(body)["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = subprocess.run(["ray", "job", "logs", "distracer-test"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    assert "distracer: done:" in logs

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 160 and summary["num_updates"] > 0
    ckpt = load_checkpoint(summary["checkpoint"])
    assert ckpt.state["counters"]["env_steps"] == summary["env_steps"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["env_steps"] == summary["env_steps"]


@pytest.mark.slow  # ~1.5 min: a head of its own, then a run on it
def test_a_driver_on_a_joined_cluster_stops_on_a_group_signal_with_a_final_checkpoint(local_head, tmp_path):
    """`distracer train` joined to a running cluster (RAY_ADDRESS = its GCS), in a process group of its own that
    gets SIGTERM whole: the cluster's processes are not in it; the driver writes its final checkpoint, exits 0,
    and the cluster stays up."""
    import signal

    from distracer.checkpoint import list_checkpoints

    run_dir = tmp_path / "joined"
    env = {**_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": local_head["RAY_AUTH_TOKEN_PATH"],
           "RAY_ADDRESS": local_head["DISTRACER_RAY_GCS_ADDRESS"]}
    sets = [a for item in TRAIN[:-2] + ["total_env_steps=1000000", "checkpoint.every_env_steps=64",
                                        f"run_dir={run_dir}"] for a in ("--set", item)]
    proc = subprocess.Popen([sys.executable, "-m", "distracer", "train", *sets], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while not list_checkpoints(run_dir / "checkpoints") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert list_checkpoints(run_dir / "checkpoints"), proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received; stopping after a final checkpoint" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert load_checkpoint(run_dir).state["counters"]["env_steps"] == summary["env_steps"]
    assert _get(f"{local_head['RAY_ADDRESS']}/api/jobs/",
                Path(local_head["RAY_AUTH_TOKEN_PATH"]).read_text().strip())[0] == 200  # the head is still up
