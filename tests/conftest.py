"""Shared test setup: headless pygame, loopback-only Ray, one thread per torch op (CI has 2 cores)."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# Ray binds every node to 127.0.0.1 with this set; tests never send traffic off the machine.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for every test that allows it (each ray.init costs seconds here)."""
    import ray

    if not ray.is_initialized():
        # 4 logical CPUs on 2 cores: a learner, two workers and a shard fit; they mostly wait on each other.
        ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=200 * 1024**2,
                 log_to_driver=False)
    yield ray
    ray.shutdown()
