"""benchmarks/gpu_check.py, the one-call GPU check: on a machine without CUDA it runs the CPU rows and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; on a CUDA machine run the script itself")
def test_without_cuda_the_check_runs_the_cpu_rows_and_says_the_gpu_rows_did_not_run():
    done = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "0.5"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device: CPU rows only" in done.stdout and "make-train check needs CUDA: not run" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["cuda"] is False and result["train"] is None
    assert [(r["case"], r["device"], r["precision"]) for r in result["rows"]] == [
        ("sac_drq_b256", "cpu", "fp32"), ("ppo_mb64", "cpu", "fp32")]
    assert all(r["updates_per_s"] > 0 for r in result["rows"])
