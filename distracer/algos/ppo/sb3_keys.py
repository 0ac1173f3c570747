"""PPOPolicy weights <-> SB3 `ActorCriticPolicy` state dicts, by renaming keys only."""

from __future__ import annotations

import torch

from distracer.algos.ppo.policy import PPOPolicy

_SB3_EXTRACTORS = ("features_extractor", "pi_features_extractor", "vf_features_extractor")


def to_sb3_state_dict(policy: PPOPolicy) -> dict[str, torch.Tensor]:
    """The policy's weights keyed as SB3 `ActorCriticPolicy` (CnnPolicy, shared extractor) names them.

    SB3 registers the shared NatureCNN under three names (features_extractor, pi_/vf_features_extractor);
    `mlp_extractor` keeps its name (empty, with no parameters, for net_arch=[]). Loads with strict=True.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in policy.state_dict().items():
        value = value.detach().cpu().clone()
        if key.startswith("features_extractor."):
            rest = key[len("features_extractor."):]
            for prefix in _SB3_EXTRACTORS:
                out[f"{prefix}.{rest}"] = value.clone()
        else:
            out[key] = value
    return out


def from_sb3_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_sb3_state_dict`: an SB3 CnnPolicy state dict -> PPOPolicy keys (shared extractor)."""
    out = {}
    for key, value in state.items():
        if key.startswith(("pi_features_extractor.", "vf_features_extractor.")):
            continue
        out[key] = value
    return out
