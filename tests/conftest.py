"""Shared test setup: headless pygame, loopback-only Ray, one thread per torch op (CI has 2 cores)."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
# Ray binds every node to 127.0.0.1 with this set; tests never send traffic off the machine.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

torch.set_num_threads(1)
