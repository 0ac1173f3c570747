"""Proximal Policy Optimization (Schulman et al. 2017) from pixels, laid out like Stable-Baselines3's PPO.

Read in this order: `config.PPOConfig` (every hyperparameter, documented), `policy.PPOPolicy` (the acting
part that rollout workers hold), `rollout.Rollout` + `collect_rollout` (the on-policy data contract with the
workers), `advantages.compute_gae`, and `learner.PPOLearner.update`, which does the whole PPO update for one
round of rollouts. `sb3_keys` renames weights to and from SB3's.

References: CleanRL `ppo_continuous_action.py` / `ppo_atari.py`, SB3 `PPO` + `ActorCriticPolicy`.
The policy has SB3's CnnPolicy layout and module names (`features_extractor` = NatureCNN shared by actor
and critic, `action_net`, `value_net`, `log_std`), so `to_sb3_state_dict` / `from_sb3_state_dict` turn
weights into an SB3 `PPO("CnnPolicy")` policy state dict and back by renaming keys only.

Continuous actions: a diagonal Gaussian with a state-independent `log_std`; the env gets the sample
clipped to [-1, 1], while log-probs are of the unclipped sample and the rollout stores the unclipped
sample (as SB3 does). Discrete actions: a Categorical over `n` actions.
"""


from distracer.algos.ppo.advantages import ReturnNormalizer, compute_gae, explained_variance
from distracer.algos.ppo.config import ACTIVATIONS, LR_SCHEDULES, PPOConfig
from distracer.algos.ppo.learner import PPOLearner
from distracer.algos.ppo.policy import PPOPolicy
from distracer.algos.ppo.rollout import Rollout, RolloutState, collect_rollout, concat_rollouts
from distracer.algos.ppo.sb3_keys import from_sb3_state_dict, to_sb3_state_dict

__all__ = ["ACTIVATIONS", "LR_SCHEDULES", "PPOConfig", "PPOLearner", "PPOPolicy", "ReturnNormalizer", "Rollout",
           "RolloutState", "collect_rollout", "compute_gae", "concat_rollouts", "explained_variance",
           "from_sb3_state_dict", "to_sb3_state_dict"]
