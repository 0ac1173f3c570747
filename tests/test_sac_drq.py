"""SAC+DrQ learner: learning, temperature, checkpoints, NaN safety, refusals, worker policy parity."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from pixel_task import SidePixelTask, evaluate_learner, transition_batch

from distracer.algos import build_policy, make_learner
from distracer.algos.base import ActionSpec, DeviceConfig, NonFiniteLossError
from distracer.algos.sac_drq import SACConfig, SACDrQLearner
from distracer.errors import ConfigError

OBS_SHAPE = (4, 36, 36)
CONTINUOUS = ActionSpec("continuous", 2)
CPU = DeviceConfig("cpu")


def new_learner(seed: int = 0, **overrides) -> SACDrQLearner:
    config = SACConfig(**{"batch_size": 32, **overrides})
    return SACDrQLearner(config, OBS_SHAPE, CONTINUOUS, CPU, seed)


def random_batch(rng: np.random.Generator, size: int = 32) -> dict:
    actions = rng.uniform(-1, 1, (size, 2)).astype(np.float32)
    batch = transition_batch("continuous", actions, rng)
    # Non-terminal transitions too, so the target path (next action, target nets) is exercised.
    batch["discount"] = np.full(size, 0.99, np.float32) * rng.integers(0, 2, size).astype(np.float32)
    return batch


def snapshot(learner: SACDrQLearner) -> dict:
    return copy.deepcopy({name: m.state_dict() for name, m in learner.modules().items()})


def assert_same_state(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_learns_side_pixel_task():
    """Off-policy loop on the toy task: random policy scores ~0.5, a pixel-reading one ~1."""
    learner = new_learner(seed=0)
    env = SidePixelTask("continuous", frame_size=OBS_SHAPE[1], stack=OBS_SHAPE[0])
    rng = np.random.default_rng(0)
    obs_buf, act_buf, rew_buf = [], [], []
    obs, _ = env.reset(seed=0)
    learning_starts, steps = 100, 500
    for t in range(steps):
        if t < learning_starts:
            action = rng.uniform(-1, 1, 2).astype(np.float32)
        else:
            action = learner.act(obs[None], explore=True)[0]
        _, reward, *_ = env.step(action)
        obs_buf.append(obs)
        act_buf.append(action)
        rew_buf.append(reward)
        obs, _ = env.reset()
        if t >= learning_starts:
            idx = rng.integers(len(obs_buf), size=32)
            o = np.stack([obs_buf[i] for i in idx])
            metrics = learner.update({"obs": o, "action": np.stack([act_buf[i] for i in idx]),
                                      "reward": np.asarray([rew_buf[i] for i in idx], np.float32),
                                      "next_obs": o, "discount": np.zeros(32, np.float32)})
    assert all(np.isfinite(v) for v in metrics.values())
    assert learner.num_updates == steps - learning_starts
    score = evaluate_learner(learner, "continuous", episodes=100)
    assert score >= 0.9, score


def test_explore_actions_in_bounds_and_typed():
    learner = new_learner()
    obs = np.random.default_rng(0).integers(0, 256, (16, *OBS_SHAPE), dtype=np.uint8)
    for explore in (True, False):
        actions = learner.act(obs, explore=explore)
        assert actions.shape == (16, 2) and actions.dtype == np.float32
        assert np.all(np.abs(actions) <= 1.0)


def _force_log_std(learner: SACDrQLearner, value: float) -> None:
    """Make the actor's log-std output a constant pre-squash `value` for every observation."""
    last = learner.actor.net[-1]
    with torch.no_grad():
        last.weight[2:].zero_()
        last.bias[2:].fill_(value)


def test_temperature_moves_towards_target_entropy():
    rng = np.random.default_rng(0)
    batch = random_batch(rng)
    # Entropy above the target (-2): a wide policy (log_std = 0 after squashing -> std 1) -> alpha falls.
    wide = new_learner()
    lo, hi = wide.config.log_std_min, wide.config.log_std_max
    _force_log_std(wide, float(np.arctanh(2 * (0.0 - lo) / (hi - lo) - 1)))
    metrics = [wide.update(random_batch(rng)) for _ in range(3)]
    assert all(m["entropy"] > wide.target_entropy for m in metrics)
    assert wide.alpha < wide.config.init_alpha
    # Entropy below the target: a near-deterministic policy (log_std at its lower bound) -> alpha rises.
    narrow = new_learner()
    _force_log_std(narrow, -20.0)
    metrics = [narrow.update(batch) for _ in range(3)]
    assert all(m["entropy"] < narrow.target_entropy for m in metrics)
    assert narrow.alpha > narrow.config.init_alpha
    # A fixed temperature stays put.
    fixed = new_learner(learn_alpha=False)
    fixed.update(batch)
    assert fixed.alpha == pytest.approx(fixed.config.init_alpha)


@pytest.mark.parametrize("variant", [{}, {"target_encoder": False, "channels_last": False, "actor_update_interval": 2,
                                          "target_update_interval": 2, "max_grad_norm": 1.0}])
def test_checkpoint_round_trip_continues_identically(variant):
    rng = np.random.default_rng(1)
    a = new_learner(seed=3, **variant)
    assert ("target_encoder" in a.modules()) == variant.get("target_encoder", True)
    for _ in range(3):
        a.update(random_batch(rng))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    b = new_learner(seed=99, **variant)  # different init and RNG: everything must come from the checkpoint
    b.load_state_dict(state)
    obs = random_batch(rng, 8)["obs"]
    np.testing.assert_array_equal(a.act(obs, explore=False), b.act(obs, explore=False))

    batch = random_batch(rng)
    assert a.update(batch) == b.update(batch)
    assert_same_state(snapshot(a), snapshot(b))
    assert a.num_updates == b.num_updates == 4


def test_checkpoint_of_other_algo_refused():
    state = new_learner().state_dict()
    state["algo"] = "dqn"
    with pytest.raises(ConfigError, match="dqn"):
        new_learner().load_state_dict(state)


def test_nan_reward_raises_and_changes_nothing():
    rng = np.random.default_rng(2)
    learner = new_learner()
    for _ in range(2):  # non-empty optimiser states
        learner.update(random_batch(rng))
    before = snapshot(learner)
    batch = random_batch(rng)
    batch["reward"][5] = np.nan
    with pytest.raises(NonFiniteLossError, match="critic_loss"):
        learner.update(batch)
    assert_same_state(before, snapshot(learner))
    assert learner.num_updates == 2
    assert all(np.isfinite(v) for v in learner.update(random_batch(rng)).values())


def test_actor_loss_leaves_encoder_and_critic_alone():
    """Encoder and Q heads move by the critic loss only: with and without an actor step they end up identical."""
    rng = np.random.default_rng(4)
    base = new_learner()
    base.update(random_batch(rng))
    # Deep copies: Optimizer.load_state_dict keeps the given moment tensors (no copy), so two learners loaded
    # from one in-memory state dict would share them.
    state = base.state_dict()
    with_actor, without_actor = new_learner(), new_learner(actor_update_interval=1000)
    with_actor.load_state_dict(copy.deepcopy(state))
    without_actor.load_state_dict(copy.deepcopy(state))
    batch = random_batch(rng)
    assert "actor_loss" in with_actor.update(batch)
    assert "actor_loss" not in without_actor.update(batch)
    for name in ("critic", "target_encoder", "target_critic"):
        assert_same_state(with_actor.modules()[name].state_dict(), without_actor.modules()[name].state_dict(), name)
    assert_same_state(with_actor.encoder.state_dict(), without_actor.encoder.state_dict(), "encoder")
    assert not torch.equal(with_actor.actor.net[0].weight, without_actor.actor.net[0].weight)


def test_refuses_discrete_and_wrong_dims():
    with pytest.raises(ConfigError, match="continuous"):
        SACDrQLearner(SACConfig(), OBS_SHAPE, ActionSpec("discrete", 5), CPU, 0)
    with pytest.raises(ConfigError, match="n=3"):
        SACDrQLearner(SACConfig(), OBS_SHAPE, ActionSpec("continuous", 3), CPU, 0)


@pytest.mark.parametrize("shape", [(36, 36, 4), (4, 36, 40), (4, 20, 20), (36, 36)])
def test_refuses_wrong_obs_shape(shape):
    with pytest.raises(ConfigError):
        SACDrQLearner(SACConfig(), shape, CONTINUOUS, CPU, 0)


def test_refuses_batch_of_wrong_shape():
    learner = new_learner()
    batch = random_batch(np.random.default_rng(0))
    batch["obs"] = batch["obs"][:, :2]
    with pytest.raises(ConfigError, match="obs"):
        learner.update(batch)


@pytest.mark.parametrize("field,value", [("tau", 0.0), ("tau", 1.5), ("batch_size", 0), ("gamma", 1.1),
                                         ("actor_lr", -1e-4), ("augment_pad", -1), ("log_std_min", 5.0),
                                         ("init_alpha", 0.0), ("n_step", 0), ("max_grad_norm", -1.0)])
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        SACConfig(**{field: value}).validate()


def test_worker_policy_acts_like_learner():
    learner = make_learner("sac_drq", SACConfig(batch_size=32), OBS_SHAPE, CONTINUOUS, CPU, seed=5)
    learner.update(random_batch(np.random.default_rng(5)))
    weights = learner.policy_weights()
    assert all(isinstance(v, (int, float, str, tuple)) for v in weights.spec.values())
    policy = build_policy(weights, device="cpu")
    obs = np.random.default_rng(6).integers(0, 256, (8, *OBS_SHAPE), dtype=np.uint8)
    actions, _ = policy.act(torch.as_tensor(obs), explore=False)
    np.testing.assert_array_equal(actions.numpy(), learner.act(obs, explore=False))
    explored, _ = policy.act(torch.as_tensor(obs), explore=True)
    assert explored.shape == (8, 2) and torch.all(explored.abs() <= 1)
    # Seeded exploration (as workers do it) is reproducible and differs from the deterministic action.
    policy.set_seed(11)
    first, _ = policy.act(torch.as_tensor(obs), explore=True)
    policy.set_seed(11)
    second, _ = policy.act(torch.as_tensor(obs), explore=True)
    assert torch.equal(first, second) and not torch.equal(first, actions)

