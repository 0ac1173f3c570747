"""Starting or joining Ray: embedded local by default, a cluster only when asked."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import ray

from distracer.config import ResourcesConfig
from distracer.errors import ConfigError
from distracer.replay.sizing import parse_bytes


def init_ray(resources: ResourcesConfig) -> bool:
    """Start or join Ray; returns True if this call started it (so the caller shuts it down).

    - already initialised (tests, Tune trainables): reuse it;
    - `resources.address` or RAY_ADDRESS set (e.g. inside `ray job submit`): bare `ray.init(address)`,
      since passing num_cpus to an existing cluster raises;
    - otherwise an embedded local Ray on loopback: `address="local"` so a stray `ray start` on this
      machine is never joined by accident.
    """
    if ray.is_initialized():
        return False
    address = cluster_address(resources)
    if address:
        check_address(address, resources.connect_timeout_s,
                      "resources.address" if resources.address else "RAY_ADDRESS")
        ray.init(address=address, log_to_driver=True)
        return True
    # Keep every node of the embedded Ray on 127.0.0.1.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    kwargs: dict = {"address": "local", "include_dashboard": False, "log_to_driver": True}
    if resources.local_num_cpus is not None:
        kwargs["num_cpus"] = resources.local_num_cpus
    if resources.object_store_memory:
        kwargs["object_store_memory"] = parse_bytes(resources.object_store_memory)
        if kwargs["object_store_memory"] < 75 * 1024**2:
            raise ConfigError(
                f"resources.object_store_memory={resources.object_store_memory} is below Ray's 75MiB minimum"
            )
        available = psutil.virtual_memory().available
        if kwargs["object_store_memory"] > available:
            raise ConfigError(f"resources.object_store_memory={resources.object_store_memory} "
                              f"({kwargs['object_store_memory'] / 1e9:.2f} GB) exceeds the {available / 1e9:.2f} GB "
                              "of RAM available; lower it (the laptop preset uses 200MB)")
    private_auth_token()
    with own_sessions():
        ray.init(**kwargs)
    return True


@contextlib.contextmanager
def own_sessions() -> Iterator[None]:
    """While the embedded Ray starts, its processes (GCS, raylet and the workers the raylet forks, agents) start in
    sessions of their own, out of the driver's process group.

    Why: schedulers, `timeout`, a closed terminal and `kill -- -PGID` signal a job's whole process group. Ray's
    processes ignore SIGINT but die of SIGTERM and SIGHUP, so the driver, told to stop after a final checkpoint,
    found its learner and workers already dead (docs/RELIABILITY.md). Out of the group, only the driver hears the
    signal and it shuts them down itself; they still die with the driver (Ray's kernel fate-sharing), and
    `ray.shutdown()` still stops them. Ray 2.60 starts them through `ray._private.services.ConsolePopen` (a
    `subprocess.Popen`); tests/test_signals.py signals a real group, so a Ray that changes this fails there.
    """
    from ray._private import services

    original = services.ConsolePopen

    class OwnSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnSession
    try:
        yield
    finally:
        services.ConsolePopen = original


def cluster_address(resources: ResourcesConfig) -> str | None:
    """The cluster a run joins: `resources.address`, else RAY_ADDRESS; None for an embedded local Ray."""
    return resources.address or os.environ.get("RAY_ADDRESS") or None


def joins_cluster(resources: ResourcesConfig) -> bool:
    """True when `init_ray` joins a cluster rather than starting an embedded local Ray."""
    return cluster_address(resources) is not None


def private_auth_token(path: Path | None = None) -> Path | None:
    """Ray's token authentication reads `~/.ray/auth_token` and, when it is absent, writes one readable by
    every user (mode 644). Create it first, private (600), as cluster/start_local_head.sh does; make an
    existing one of ours private too. Nothing to do when the token comes from RAY_AUTH_TOKEN or auth is off."""
    if path is None and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE") == "disabled"):
        return None
    path = path or Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def learner_gpus(resources: ResourcesConfig) -> float:
    """GPUs for the learner: resolve 'auto' (-1) against the cluster, refuse a GPU the cluster lacks."""
    available = float(ray.cluster_resources().get("GPU", 0.0))
    if resources.learner_gpus == -1:
        return 1.0 if available >= 1 else 0.0
    if resources.learner_gpus > available:
        raise ConfigError(f"resources.learner_gpus={resources.learner_gpus} but the Ray cluster has {available:g} GPUs")
    return resources.learner_gpus


def check_address(address: str, timeout_s: float, source: str = "RAY_ADDRESS") -> None:
    """Refuse, in one line and within `timeout_s`, a cluster address that `ray.init` cannot join.

    `ray.init` raises a long traceback for a dashboard URL and retries an address with nothing listening
    without end; this checks the form (GCS `host:port`, `ray://host:port`, or `auto`) and that the port
    accepts a TCP connection, retrying until the deadline (a head that is still starting gets the time).
    """
    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"{source}={address} is a dashboard URL (for `ray job submit`); distracer joins a "
                          "cluster at its GCS address host:port (e.g. 127.0.0.1:6379, what `ray start --head` "
                          "prints), or unset it for an embedded local Ray")
    host_port = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{source}={address} is not host:port (e.g. 127.0.0.1:6379) or ray://host:port")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.1, min(2.0, timeout_s))):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(f"cannot reach a Ray cluster at {source}={address} within {timeout_s:g} s "
                                  f"({exc.strerror or exc}); start one (`ray start --head`), fix the address, or "
                                  "unset it for an embedded local Ray") from None
            time.sleep(0.5)


def check_fit(asked: dict[str, float], what: str, wait_s: float, embedded: bool,
              log: Callable[[str], None] = print) -> None:
    """Refuse, before any actor starts, a run whose actors ask for more than the cluster has.

    `asked`: resource -> amount for the whole run (CPU, GPU, custom). An embedded local Ray never grows:
    a shortfall is one line at once, naming what was asked, what exists and what to change. A joined cluster
    may be autoscaling: it is polled for up to `wait_s` seconds, saying once what it waits for, then refused.
    Without this, Ray queues the actors that do not fit and the run waits in silence forever.
    """
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        total = ray.cluster_resources()
        short = {k: v for k, v in asked.items() if v > total.get(k, 0.0) + 1e-9}
        if not short:
            return
        have = ", ".join(f"{total.get(k, 0.0):g} {k}" for k in short)
        need = ", ".join(f"{v:g} {k}" for k, v in short.items())
        if embedded or time.monotonic() >= deadline:
            where = "the embedded local Ray has" if embedded else f"after {wait_s:g} s the cluster has"
            raise ConfigError(f"the run's actors ask for {need} ({what}) but {where} {have}; {FIT_HINT}")
        if not said:
            log(f"distracer: waiting up to {wait_s:g} s for the cluster to offer {need} (it has {have}; "
                "resources.fit_timeout_s)")
            said = True
        time.sleep(2.0)


FIT_HINT = ("use a preset sized for it (--preset cpu or laptop on one machine) or lower resources.num_workers, "
            "worker_cpus, learner_cpus or shard_cpus (resources.local_num_cpus sets the embedded Ray's CPUs)")
