"""Small helpers shared by the benchmarks: what machine a figure came from, and the JSON last line."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else whatever platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where and when a benchmark ran: cores, CPU model, load average (others share these cores), UTC time."""
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_json_last(result: dict[str, Any]) -> None:
    """Print the benchmark's result as one JSON line; call it last, so `tail -n 1` reads the figures."""
    print(json.dumps(result), flush=True)
