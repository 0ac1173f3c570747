"""The cluster configs stay launchable and locked down.

Offline and fast: the `ray up` configs go through Ray's own schema validation and default-filling
(the first thing `ray up` does), the KubeRay manifests and the runtime env are checked for structure,
and every config is checked for the security properties docs/CLUSTER.md promises: token
authentication on, no Ray port open to the internet, the dashboard on loopback or inside the cluster.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
# Ports a Ray cluster listens on that must never face the internet: GCS, dashboard, Ray Client,
# object manager (as set in the configs), dashboard agent, metrics.
RAY_PORTS = {6379, 8265, 10001, 8076, 52365, 8080}
WORLD = {"0.0.0.0/0", "::/0"}
AUTH_TOKEN_MOUNT = "/home/ray/.ray/auth_token"


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins for `package` (e.g. ray[default,tune]==2.60.0 -> 2.60.0)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no exact version of {package}")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------------------------------------------
# Cluster launcher (`ray up`) configs


@pytest.fixture(params=LAUNCHER_CONFIGS)
def launcher(request) -> tuple[str, dict]:
    return request.param, load(CLUSTER / request.param)


def start_commands(config: dict) -> list[str]:
    return [*config["head_start_ray_commands"], *config["worker_start_ray_commands"]]


def test_launcher_config_passes_rays_own_validation(launcher):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    name, config = launcher
    validate_config(copy.deepcopy(config))
    # What `ray up` does next: merge the provider's defaults, check the docker section, fill in
    # per-node-type worker bounds. The result must still satisfy the schema.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"], name


def test_launcher_config_turns_token_auth_on(launcher):
    name, config = launcher
    run_options = " ".join(config["docker"]["run_options"])
    # Every process of every container (ray start, the autoscaler, attach shells, job drivers).
    assert "RAY_AUTH_MODE=token" in run_options, name
    assert f"RAY_AUTH_TOKEN_PATH={AUTH_TOKEN_MOUNT}" in run_options, name
    for cmd in start_commands(config):
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, f"{name}: {cmd!r} starts Ray without token auth"
    # The token comes from the user's own file, never from the config.
    assert config["file_mounts"].get(AUTH_TOKEN_MOUNT) == "~/.ray/auth_token", name
    text = (CLUSTER / name).read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]\s*\S", text), f"{name} must not carry a token value"


def test_launcher_config_keeps_ray_ports_off_the_internet(launcher):
    name, config = launcher
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head, f"{name}: the dashboard must bind to loopback"
    assert "0.0.0.0" not in " ".join(start_commands(config)), name
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for node_type in config["available_node_types"].values():
        rules = rules + node_type["node_config"].get("IpPermissions", [])
    for rule in rules:
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if cidrs & WORLD:
            lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
            opened = set(range(0, 65536)) if lo == -1 else set(range(lo, hi + 1))
            assert not (opened & RAY_PORTS), f"{name}: {rule} opens Ray ports to the internet"
            assert opened == {22}, f"{name}: only SSH may be reachable from anywhere, got {rule}"
    if config["provider"]["type"] == "gcp":
        # Firewall rules live in the VPC, not here: nodes carry a tag that rules can target.
        for node_type in config["available_node_types"].values():
            assert "distracer-ray" in node_type["node_config"]["tags"]["items"], name


def test_launcher_config_has_gpu_learner_and_autoscaled_cpu_rollout(launcher):
    name, config = launcher
    types = config["available_node_types"]
    gpu = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) >= 1}
    cpu = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) == 0 and k != config["head_node_type"]}
    assert gpu, f"{name}: no GPU node type for the learner"
    assert cpu, f"{name}: no CPU-only node type for rollout workers"
    for k, v in cpu.items():
        assert 0 <= v["min_workers"] < v["max_workers"] <= config["max_workers"], f"{name}: {k} bounds"
    workers = [v["max_workers"] for k, v in types.items() if k != config["head_node_type"]]
    assert sum(workers) <= config["max_workers"], f"{name}: per-type max_workers exceed max_workers"
    for k, v in gpu.items():
        node = v["node_config"]
        if config["provider"]["type"] == "aws":
            assert re.match(r"(g|p)\d", node["InstanceType"]), f"{name}: {k} is not a GPU instance"
        else:
            assert node["guestAccelerators"][0]["acceleratorCount"] >= 1, name
            assert node["scheduling"][0]["onHostMaintenance"] == "TERMINATE", name


def test_launcher_config_runs_the_project_image_with_the_pinned_ray(launcher):
    name, config = launcher
    docker = config["docker"]
    assert docker["image"].split("/")[-1].startswith("distracer:"), name
    # The image's ENTRYPOINT is `distracer`; the launcher runs `docker run ... IMAGE bash`.
    assert '--entrypoint ""' in docker["run_options"], name
    checks = " ".join(config["setup_commands"])
    assert f"ray.__version__ == '{pinned('ray')}'" in checks, name


# ---------------------------------------------------------------------------------------------------
# KubeRay manifests


def kuberay_docs() -> dict[str, list[dict]]:
    return {p.name: load_all(p) for p in sorted((CLUSTER / "kuberay").glob("*.yaml"))}


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = []
    for name, docs in kuberay_docs().items():
        for doc in docs:
            if doc["kind"] == "RayCluster":
                specs.append((name, doc["spec"]))
            elif doc["kind"] == "RayJob":
                specs.append((name, doc["spec"]["rayClusterSpec"]))
    return specs


def pod_containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_manifests_have_the_expected_kinds():
    docs = kuberay_docs()
    kinds = {name: [(d["apiVersion"], d["kind"]) for d in ds] for name, ds in docs.items()}
    assert kinds["raycluster.yaml"] == [("ray.io/v1", "RayCluster")]
    assert kinds["rayjob.yaml"] == [("ray.io/v1", "RayJob")]
    assert kinds["runs-pvc.yaml"] == [("v1", "PersistentVolumeClaim")]


@pytest.mark.parametrize("index", [0, 1])
def test_kuberay_cluster_spec(index):
    name, spec = ray_cluster_specs()[index]
    assert spec["rayVersion"] == pinned("ray"), name
    # KubeRay >= 1.5.1 generates a token Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every pod.
    assert spec["authOptions"]["mode"] == "token", name
    head = spec["headGroupSpec"]
    # Reachable inside the Kubernetes cluster only.
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
    assert not head.get("enableIngress", False), name

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_groups = [
        g for g in groups.values() if any("nvidia.com/gpu" in c["resources"]["limits"] for c in pod_containers(g))
    ]
    cpu_groups = [g for g in groups.values() if g not in gpu_groups]
    assert len(gpu_groups) == 1, f"{name}: one GPU learner group"
    assert cpu_groups, f"{name}: a CPU rollout group"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], f"{name}: {g['groupName']}"
    assert any(g["maxReplicas"] > g["minReplicas"] for g in cpu_groups), f"{name}: rollout pods do not scale"

    for group in [head, *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod_containers(group):
            assert c["image"].split("/")[-1].startswith("distracer:"), name
            assert {"name": "SDL_VIDEODRIVER", "value": "dummy"} in c["env"], name
            # Requests equal limits: the pods get the CPUs/GPUs Ray advertises for them.
            assert c["resources"]["requests"] == c["resources"]["limits"], name
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            # The token comes from the operator's Secret, never from the manifest.
            assert all(e["name"] != "RAY_AUTH_TOKEN" or "valueFrom" in e for e in c["env"]), name


def test_raycluster_and_rayjob_describe_the_same_cluster():
    (_, standalone), (_, in_job) = ray_cluster_specs()
    assert standalone == in_job, "keep rayjob.yaml's rayClusterSpec in step with raycluster.yaml's spec"


def test_rayjob_runs_distracer_train_with_results_on_the_volume():
    (job,) = load_all(CLUSTER / "kuberay" / "rayjob.yaml")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["distracer", "train", "--config", "tune_configs/cluster.yaml"]
    assert (ROOT / argv[3]).is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["SDL_VIDEODRIVER"] == "dummy"

    # run_dir, as the entrypoint sets it, lies on the head's persistent volume.
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a in ("--set", "-s")]
    run_dir = dict(o.split("=", 1) for o in overrides)["run_dir"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]}
    (pvc,) = load_all(CLUSTER / "kuberay" / "runs-pvc.yaml")
    (volume,) = [name for name, claim in claims.items() if claim == pvc["metadata"]["name"]]
    assert Path(run_dir).is_relative_to(mounts[volume])


def test_rayjob_entrypoint_is_a_valid_distracer_config():
    config_mod = pytest.importorskip("distracer.config")
    (job,) = load_all(CLUSTER / "kuberay" / "rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    configs = [str(ROOT / argv[i + 1]) for i, a in enumerate(argv) if a in ("--config", "-c")]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a in ("--set", "-s")]
    config = config_mod.load_config(configs, overrides)
    assert config.run_dir == "/home/ray/runs/cluster"


# ---------------------------------------------------------------------------------------------------
# Runtime env and local-head scripts


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    data = load(CLUSTER / "runtime_env.yaml")
    env = RuntimeEnv(**data)
    assert env["env_vars"]["SDL_VIDEODRIVER"] == "dummy"
    assert data["working_dir"] == "."
    assert {".venv", ".git", "runs"} <= set(data["excludes"])
    # Image/venv based: a per-job pip install could swap torch or Ray under the nodes.
    assert not {"pip", "conda", "uv"} & set(data)


def _script_env() -> dict[str, str]:
    # `make test` runs .venv/bin/python without activating the venv: point the script at its ray.
    env = dict(os.environ)
    ray_bin = Path(sys.executable).parent / "ray"
    if ray_bin.exists():
        env["RAY"] = str(ray_bin)
    return env


@pytest.mark.parametrize("script", ["start_local_head.sh", "stop_local_head.sh"])
def test_local_head_scripts_parse_and_document_themselves(script):
    path = CLUSTER / script
    assert os.access(path, os.X_OK), f"{script} must be executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "Usage:" in out.stderr
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(path)], check=True)


def test_stop_script_without_a_head_is_a_clean_no_op(tmp_path):
    out = subprocess.run(
        [str(CLUSTER / "stop_local_head.sh"), "--temp-dir", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=30, env=_script_env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "DISTRACER_RAY_STOPPED=0"


def test_start_script_rejects_a_temp_dir_too_long_for_ray_sockets(tmp_path):
    if shutil.which("setsid") is None or not Path(_script_env().get("RAY", shutil.which("ray") or "")).exists():
        pytest.skip("needs setsid and ray")
    long_dir = tmp_path / ("x" * 60)
    out = subprocess.run(
        [str(CLUSTER / "start_local_head.sh"), "--temp-dir", str(long_dir)],
        capture_output=True, text=True, timeout=30, env=_script_env(),
    )
    assert out.returncode != 0
    assert out.stdout == ""
    assert "start_local_head: error:" in out.stderr and "<= 40" in out.stderr
