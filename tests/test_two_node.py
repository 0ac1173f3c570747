"""A run on a simulated two-node cluster: two raylets with their own object stores on this machine.

The learner is pinned to one node and the rollout workers and replay shard to the other (custom
resources), so fragments, batches and weights all cross the node boundary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # both raylets on 127.0.0.1
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"learner_node": 1}, "object_store_memory": 100 * 1024**2,
        "include_dashboard": False})
    cluster.add_node(num_cpus=3, resources={"rollout_node": 10}, object_store_memory=100 * 1024**2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_learner_and_workers_on_different_nodes(two_node_cluster, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        "env.frame_size=48", "eval.every_env_steps=0", "eval.episodes=1",
        "eval.select_episodes=0", "off_policy.fragment_length=16",
        "replay.ram_budget=32MB", "sac_drq.batch_size=16", "sac_drq.learning_starts=64",
        "sac_drq.replay_ratio=0.5", "total_env_steps=192", "off_policy.weights_interval=10",
        "learner.device=cpu", "resources.shard_cpus=0.5", f"run_dir={run_dir}",
        f"resources.address={two_node_cluster.address}",
        "resources.learner_resources={learner_node: 1}", "resources.worker_resources={rollout_node: 1}",
    ]
    cmd = [sys.executable, "-m", "distracer", "train"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    placement = summary["placement"]
    worker_nodes = set(placement["workers"]) | set(placement["shards"])
    assert len(worker_nodes) == 1
    assert placement["learner"] not in worker_nodes  # batches and weights crossed nodes
    assert summary["num_updates"] > 0 and summary["env_steps"] >= 192
    assert summary["weights_version"] > 1  # weights published after training reached the other node
