"""Starting or joining Ray: embedded local by default, a cluster only when asked."""

from __future__ import annotations

import os

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
    address = resources.address or os.environ.get("RAY_ADDRESS")
    if address:
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
    ray.init(**kwargs)
    return True


def learner_gpus(resources: ResourcesConfig) -> float:
    """GPUs for the learner: resolve 'auto' (-1) against the cluster, refuse a GPU the cluster lacks."""
    available = float(ray.cluster_resources().get("GPU", 0.0))
    if resources.learner_gpus == -1:
        return 1.0 if available >= 1 else 0.0
    if resources.learner_gpus > available:
        raise ConfigError(f"resources.learner_gpus={resources.learner_gpus} but the Ray cluster has {available:g} GPUs")
    return resources.learner_gpus
