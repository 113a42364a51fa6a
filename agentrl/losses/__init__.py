"""Policy losses. Each is a pure function

    fn(log_prob[B,T], old_log_prob[B,T], advantages[B], mask[B,T], *, p=1.0, clip_low=0.2, clip_high=0.2, **extra)
        -> (loss: scalar Tensor, metrics: dict[str, Tensor])

looked up by name in POLICY_LOSSES. Adding a loss = one function + one entry below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agentrl.errors import lookup
from agentrl.losses.holder import gmpo, gspo, holder_log_mean, holder_seq, holder_token, token_weights
from agentrl.losses.kl import kl_k3
from agentrl.losses.ppo import GRPO_AGGREGATIONS, grpo

PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "holder_seq": holder_seq,
    "holder_token": holder_token,
    "grpo": grpo,
    "gspo": gspo,
    "gmpo": gmpo,
}


def get_policy_loss(name: str) -> PolicyLoss:
    """The loss registered under `name`; an unknown name lists the valid ones and the closest match."""
    return lookup("policy loss", POLICY_LOSSES, name)


__all__ = [
    "GRPO_AGGREGATIONS",
    "POLICY_LOSSES",
    "PolicyLoss",
    "get_policy_loss",
    "gmpo",
    "grpo",
    "gspo",
    "holder_log_mean",
    "holder_seq",
    "holder_token",
    "kl_k3",
    "token_weights",
]
