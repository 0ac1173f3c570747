"""Joining a cluster: a bad RAY_ADDRESS gets one line within the connect timeout, not a traceback or a hang."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from distracer.errors import ConfigError
from distracer.ray_setup import check_address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_url_is_refused_with_what_to_set_instead():
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard URL.*6379"):
        check_address("http://127.0.0.1:8265", 1.0)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost:port", ":6379"])
def test_malformed_address_is_refused(address):
    with pytest.raises(ConfigError, match="is not host:port"):
        check_address(address, 1.0, "resources.address")


def test_nothing_listening_fails_within_the_timeout():
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"cannot reach a Ray cluster at RAY_ADDRESS=127.0.0.1:{port} within 1 s"):
        check_address(f"127.0.0.1:{port}", 1.0)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_listening_port_and_auto_pass(scheme):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_address(f"{scheme}127.0.0.1:{server.getsockname()[1]}", 1.0)
    check_address("auto", 1.0)


def test_train_cli_says_it_in_one_line():
    # In a process of its own: this test session's Ray is already initialised, and `init_ray` reuses it.
    import os
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[1] / "tune_configs" / "ppo.yaml"
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    proc = subprocess.run([sys.executable, "-m", "distracer", "train", "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distracer: error: RAY_ADDRESS=http://")


def test_a_run_that_does_not_fit_is_refused_before_its_actors_start(ray_local):
    # ray_local has 4 CPUs; 4 workers of 1 CPU plus the learner and a shard do not fit, and an already
    # started local Ray is not autoscaling: after fit_timeout_s (here 0) it is one line.
    from distracer.config import load_config
    from distracer.ray_setup import check_fit
    from distracer.runtime.actors import actor_resources

    config = load_config([str(Path(__file__).resolve().parents[1] / "tune_configs" / "dqn.yaml")],
                         ["resources.num_workers=4", "replay.num_shards=2", "resources.fit_timeout_s=0"])
    asked, what = actor_resources(config, 0.0)
    assert asked == {"CPU": 1 + 4 * 1 + 2 * 0.5} and "4 worker(s) x 1" in what
    with pytest.raises(ConfigError, match=r"ask for 6 CPU .* the cluster has 4 CPU; use a preset"):
        check_fit(asked, what, 0.0, embedded=False, log=lambda _: None)
    with pytest.raises(ConfigError, match="the embedded local Ray has 4 CPU"):
        check_fit(asked, what, 60.0, embedded=True)
    check_fit({"CPU": 4.0}, "fits", 0.0, embedded=True)


def test_the_embedded_mode_auth_token_is_private(tmp_path):
    from distracer.ray_setup import private_auth_token

    fresh = private_auth_token(tmp_path / "ray" / "auth_token")
    assert fresh.stat().st_mode & 0o777 == 0o600 and len(fresh.read_text()) == 64
    loose = tmp_path / "loose_token"
    loose.write_text("x" * 64)
    loose.chmod(0o644)
    private_auth_token(loose)
    assert loose.stat().st_mode & 0o777 == 0o600 and loose.read_text() == "x" * 64


def test_an_object_store_larger_than_the_ram_is_refused_before_ray_starts():
    # In a process of its own, like a user's first run (this session's Ray is already up and would be reused).
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[1] / "tune_configs" / "ppo.yaml"
    proc = subprocess.run([sys.executable, "-m", "distracer", "train", "--config", str(config),
                           "--set", "resources.object_store_memory=100TB"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "object_store_memory=100TB" in proc.stderr and "GB of RAM available" in proc.stderr
    assert "Started a local Ray" not in proc.stderr + proc.stdout


def test_train_that_does_not_fit_the_embedded_ray_exits_in_one_line_within_seconds():
    # The field report: an algorithm config without a preset asked for 3.5 CPUs of a 2-CPU machine and waited
    # forever. Now the embedded Ray (2 CPUs here, whatever this machine has) refuses it before any actor starts.
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[1] / "tune_configs" / "dqn.yaml"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "distracer", "train", "--config", str(config),
                           "--set", "total_env_steps=800", "--set", "resources.local_num_cpus=2",
                           "--set", "resources.num_workers=2", "--set", "replay.num_shards=1"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distracer: error:")]
    assert len(errors) == 1 and "ask for 3.5 CPU" in errors[0] and "embedded local Ray has 2 CPU" in errors[0]
    assert "--preset cpu" in errors[0]
    assert time.monotonic() - start < 120
