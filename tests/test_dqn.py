"""DQN: learns the discrete pixel task, double-DQN targets, schedules, target updates, checkpoints, SB3 export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pixel_task import SidePixelTask, evaluate_learner, transition_batch

from distracer.algos import build_policy, make_learner
from distracer.algos.base import ActionSpec, DeviceConfig, NonFiniteLossError
from distracer.algos.dqn import DQNConfig, DQNLearner, DQNPolicy, apex_epsilons, epsilon_at, to_sb3_state_dict
from distracer.errors import ConfigError

OBS = (4, 36, 36)
DISCRETE = ActionSpec("discrete", 5)


def make(seed: int = 0, obs_shape=OBS, **overrides) -> DQNLearner:
    return DQNLearner(DQNConfig(**overrides), obs_shape, DISCRETE, DeviceConfig("cpu"), seed)


def batch(rng: np.random.Generator, size: int = 16, frame_size: int = 36) -> dict:
    return transition_batch("discrete", rng.integers(0, 5, size), rng, frame_size)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----- learning -----
def test_learns_discrete_side_task_from_off_policy_batches():
    learner = make(seed=0, target_update_interval=50)
    rng = np.random.default_rng(0)
    # A uniformly random policy (epsilon 1) scores about 1/5.
    learner.policy.epsilon = 1.0
    env = SidePixelTask("discrete")
    obs, _ = env.reset(seed=7)
    random_score = np.mean([env.reward(learner.act(obs[None], explore=True)[0]) for _ in range(200)])
    assert random_score < 0.35
    for _ in range(150):
        metrics = learner.update(batch(rng, 32))
    assert evaluate_learner(learner, "discrete") >= 0.9
    assert metrics["q_loss"] < 0.05
    assert learner.num_updates == 150


def test_bootstraps_through_the_target_network_to_the_fixed_point():
    # next_obs == obs and discount 0.5: Q*(s, right side) = 1 + 0.5 * 2 = 2, Q*(s, other) = 0 + 0.5 * 2 = 1.
    learner = make(seed=0, target_update_interval=25)
    rng = np.random.default_rng(0)
    for _ in range(250):
        b = batch(rng, 32)
        b["discount"][:] = 0.5
        learner.update(b)
    env = SidePixelTask("discrete")
    for side_seed in range(4):
        obs, _ = env.reset(seed=side_seed)
        q = learner.q_net(torch.as_tensor(obs[None]))[0].detach()
        expected = torch.ones(5)
        expected[0 if env._side < 0 else 1] = 2.0
        torch.testing.assert_close(q, expected, atol=0.1, rtol=0.0)
    assert evaluate_learner(learner, "discrete") >= 0.9


def test_dueling_head_learns_and_refuses_sb3_export():
    learner = make(seed=1, dueling=True, target_update_interval=50)
    rng = np.random.default_rng(1)
    for _ in range(150):
        learner.update(batch(rng, 32))
    assert evaluate_learner(learner, "discrete") >= 0.9
    with pytest.raises(ConfigError, match="dueling"):
        to_sb3_state_dict(learner.policy)


# ----- targets -----
def _constant_q(net: torch.nn.Module, values: list[float]) -> None:
    """Make a plain-head QNetwork output `values` for every observation."""
    with torch.no_grad():
        net.q_net[0].weight.zero_()
        net.q_net[0].bias.copy_(torch.tensor(values))


@pytest.mark.parametrize("double_q", [True, False])
def test_td_target_uses_online_argmax_and_target_value(double_q):
    learner = make(double_q=double_q, target_update_interval=1000)
    _constant_q(learner.q_net, [1.0, 5.0, 2.0, 0.0, -1.0])  # online argmax: action 1
    _constant_q(learner.q_target, [10.0, 3.0, 7.0, 0.0, 0.0])  # target's own argmax: action 0
    rng = np.random.default_rng(0)
    b = batch(rng, 4)
    b["action"] = np.array([0, 1, 2, 4])
    b["reward"] = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    b["discount"] = np.array([0.9, 0.0, 0.99**3, 1.0], np.float32)
    next_value = 3.0 if double_q else 10.0  # double: target net at the online argmax; plain: target max
    expected_target = b["reward"] + b["discount"] * next_value
    target = learner.td_target(
        torch.as_tensor(b["reward"]), torch.as_tensor(b["discount"]), torch.as_tensor(b["next_obs"])
    )
    torch.testing.assert_close(target, torch.as_tensor(expected_target))

    metrics = learner.update(b)
    q_taken = torch.tensor([1.0, 5.0, 2.0, -1.0])
    expected_loss = F.smooth_l1_loss(q_taken, torch.as_tensor(expected_target)).item()
    assert metrics["q_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["target_mean"] == pytest.approx(float(expected_target.mean()), rel=1e-5)
    assert metrics["q_mean"] == pytest.approx(float(q_taken.mean()), rel=1e-5)


def test_target_network_hard_update_timing():
    learner = make(target_update_interval=3)
    rng = np.random.default_rng(0)
    initial = params(learner.q_target)
    assert same(initial, params(learner.q_net))  # starts as a copy
    for step in (1, 2):
        metrics = learner.update(batch(rng))
        assert metrics["target_updated"] == 0.0, step
        assert same(params(learner.q_target), initial)
        assert not same(params(learner.q_target), params(learner.q_net))
    metrics = learner.update(batch(rng))
    assert metrics["target_updated"] == 1.0
    assert same(params(learner.q_target), params(learner.q_net))
    copied = params(learner.q_target)
    learner.update(batch(rng))
    assert same(params(learner.q_target), copied)
    assert not same(copied, params(learner.q_net))


def test_polyak_target_update():
    learner = make(target_update_interval=1, tau=0.25)
    before = params(learner.q_target)
    learner.update(batch(np.random.default_rng(0)))
    online = params(learner.q_net)
    for k, v in params(learner.q_target).items():
        torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * online[k])


# ----- exploration -----
def test_epsilon_schedule_start_middle_end():
    assert epsilon_at(0, 1.0, 0.05, 1000) == pytest.approx(1.0)
    assert epsilon_at(500, 1.0, 0.05, 1000) == pytest.approx(0.525)
    assert epsilon_at(1000, 1.0, 0.05, 1000) == pytest.approx(0.05)
    assert epsilon_at(10**9, 1.0, 0.05, 1000) == pytest.approx(0.05)
    assert epsilon_at(5, 1.0, 0.05, 0) == pytest.approx(0.05)
    config = DQNConfig(exploration_fraction=0.1, exploration_horizon=200_000)
    assert config.worker_epsilon(0, 0, 1) == pytest.approx(1.0)
    assert config.worker_epsilon(10_000, 0, 1) == pytest.approx(0.525)
    assert config.worker_epsilon(20_000, 0, 1) == pytest.approx(0.05)
    assert DQNConfig(eps_decay_steps=100).worker_epsilon(50, 0, 1) == pytest.approx(0.525)


def test_apex_epsilons():
    eps = apex_epsilons(8)
    assert eps[0] == pytest.approx(0.4)
    assert eps[-1] == pytest.approx(0.4**8)
    assert eps[3] == pytest.approx(0.4 ** (1 + 3 / 7 * 7))
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert apex_epsilons(1) == [0.4]
    assert apex_epsilons(3, base=0.5, alpha=2) == pytest.approx([0.5, 0.25, 0.125])
    learner = make(per_worker_epsilon=True)
    assert learner.config.worker_epsilon(0, 2, 8) == pytest.approx(eps[2])
    assert make().config.worker_epsilon(0, 2, 8) == pytest.approx(1.0)


def test_epsilon_greedy_exploration_is_seeded_and_settable():
    obs = torch.as_tensor(np.stack([SidePixelTask("discrete").reset(seed=s)[0] for s in range(64)]))
    learner = make()
    policy = learner.policy
    greedy, _ = policy.act(obs, explore=False)
    policy.epsilon = 0.0
    assert torch.equal(policy.act(obs, explore=True)[0], greedy)
    policy.epsilon = 1.0
    policy.set_seed(3)
    first = policy.act(obs, explore=True)[0]
    policy.set_seed(3)
    assert torch.equal(policy.act(obs, explore=True)[0], first)
    assert len(set(first.tolist())) == 5  # uniform over the 5 actions
    with pytest.raises(ConfigError):
        policy.epsilon = 1.5


# ----- checkpoints and weights -----
def test_checkpoint_round_trip_gives_identical_actions_and_next_update():
    rng = np.random.default_rng(0)
    a = make(seed=0, augment_pad=2, target_update_interval=2)  # augmentation draws from the generator
    for _ in range(3):
        a.update(batch(rng))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "epsilon" not in state["extra"]  # workers get theirs from DQNConfig.worker_epsilon; none is saved

    b = make(seed=99, augment_pad=2, target_update_interval=2)
    b.load_state_dict(state)
    assert b.num_updates == 3
    a.policy.epsilon = b.policy.epsilon = 0.3  # what a worker is handed
    obs = batch(np.random.default_rng(5), 32)["obs"]
    np.testing.assert_array_equal(a.act(obs, explore=False), b.act(obs, explore=False))
    np.testing.assert_array_equal(a.act(obs, explore=True), b.act(obs, explore=True))
    next_batch = batch(rng)
    assert a.update(next_batch) == b.update(next_batch)
    assert same(params(a.q_net), params(b.q_net))
    assert same(params(a.q_target), params(b.q_target))


def test_nan_reward_raises_and_changes_nothing():
    learner = make()
    rng = np.random.default_rng(0)
    learner.update(batch(rng))  # so the optimiser has state
    weights = params(learner.policy)
    target = params(learner.q_target)
    opt_state = {k: v.clone() for k, v in learner.optimizer.state_dict()["state"][0].items()}
    bad = batch(rng)
    bad["reward"][3] = np.nan
    with pytest.raises(NonFiniteLossError, match="q_loss"):
        learner.update(bad)
    assert same(params(learner.policy), weights)
    assert same(params(learner.q_target), target)
    after = learner.optimizer.state_dict()["state"][0]
    assert all(torch.equal(after[k], v) for k, v in opt_state.items())
    assert learner.num_updates == 1
    learner.update(batch(rng))  # still usable afterwards
    assert learner.num_updates == 2


def test_refuses_continuous_actions_and_bad_obs_shapes():
    with pytest.raises(ConfigError, match="DQN needs discrete actions; set env.action_space=discrete"):
        DQNLearner(DQNConfig(), OBS, ActionSpec("continuous", 2), DeviceConfig("cpu"), 0)
    with pytest.raises(ConfigError, match="DQN needs discrete actions"):
        make_learner("dqn", DQNConfig(), OBS, ActionSpec("continuous", 2), DeviceConfig("cpu"))
    with pytest.raises(ConfigError):
        make(obs_shape=(36, 36, 4))  # channel-last
    with pytest.raises(ConfigError):
        make(obs_shape=(4, 20, 20))  # too small for the NatureCNN
    learner = make()
    with pytest.raises(ConfigError, match="shape"):
        learner.update(batch(np.random.default_rng(0), frame_size=40))
    with pytest.raises(ConfigError, match="dqn.gamma"):
        make(gamma=1.5)


def test_build_policy_from_weights_acts_identically():
    learner = make(seed=4)
    rng = np.random.default_rng(4)
    for _ in range(5):
        learner.update(batch(rng))
    weights = learner.policy_weights()
    policy = build_policy(weights)
    assert isinstance(policy, DQNPolicy)
    # Weights carry no epsilon: a worker's comes from DQNConfig.worker_epsilon with each fragment it collects.
    assert "epsilon" not in weights.spec and policy.epsilon == 0.0
    learner.policy.epsilon = policy.epsilon = 0.5
    obs = torch.as_tensor(batch(rng, 32)["obs"])
    assert torch.equal(policy.act(obs, explore=False)[0], learner.policy.act(obs, explore=False)[0])
    policy.set_seed(11)
    learner.policy.set_seed(11)
    assert torch.equal(policy.act(obs, explore=True)[0], learner.policy.act(obs, explore=True)[0])


def test_q_net_loads_into_sb3_dqn_cnn_policy():
    sb3 = pytest.importorskip("stable_baselines3")
    env = SidePixelTask("discrete", frame_size=84)  # Box(0, 255, (4, 84, 84), uint8), Discrete(5)
    learner = make(seed=2, obs_shape=(4, 84, 84))
    rng = np.random.default_rng(2)
    for _ in range(3):
        learner.update(batch(rng, 8, frame_size=84))
    model = sb3.DQN("CnnPolicy", env, buffer_size=16, learning_starts=0, device="cpu", seed=0)
    model.policy.q_net.load_state_dict(to_sb3_state_dict(learner.policy), strict=True)
    obs = batch(rng, 32, frame_size=84)["obs"]
    sb3_actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(sb3_actions, learner.act(obs, explore=False))
    with torch.no_grad():
        torch.testing.assert_close(
            model.policy.q_net(torch.as_tensor(obs)), learner.q_net(torch.as_tensor(obs)), rtol=1e-5, atol=1e-5
        )
    # The whole SB3 policy (online and target nets) loads strictly too.
    model.policy.load_state_dict(to_sb3_state_dict(learner.policy, full=True), strict=True)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], sb3_actions)
