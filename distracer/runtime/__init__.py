"""The Ray runtime: the driver, its rollout-worker, learner and replay-shard actors, the loops that feed the
learner (off-policy fragments, on-policy rollouts), and the final selection of the policy a run recommends."""
