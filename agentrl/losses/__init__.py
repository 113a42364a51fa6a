"""Policy losses. Each is a pure function

    fn(log_prob[B,T], old_log_prob[B,T], advantages[B], mask[B,T], *, p=1.0, clip_low=0.2, clip_high=0.2,
       is_weight=None, ...)
        -> (loss: scalar Tensor, metrics: dict[str, Tensor])

looked up by name in POLICY_LOSSES. Adding a loss = one function + one entry below. Every option is an explicit
keyword-only parameter (no **kwargs): the learner passes the LEARNER_PASSED_OPTIONS that a loss declares (a loss
that takes no p simply does not declare it), the user's `algo.loss_kwargs` fill the rest, and an option the loss
does not declare is rejected before any weights load (agentrl.algo.check_loss_options). `is_weight` [B, T] is the
detached rollout-mismatch factor (losses/mismatch.py); a loss that does not declare it cannot run with
learner.mismatch.correction on. A sequence-level loss declares `aggregate_mask` [B, T], the positions its per-sequence
mean runs over: with algo.aggregate_over=chosen the learner passes the tokens the agent chose (≥ 2 allowed under
constrained decoding), leaving the grammar's forced tokens out; token-level losses do not declare it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from agentrl.errors import lookup
from agentrl.losses.holder import gmpo, gspo, holder_log_mean, holder_seq, holder_token, token_weights
from agentrl.losses.kl import kl_k3
from agentrl.losses.ppo import GRPO_AGGREGATIONS, grpo

# Options the learner fills in itself, for every loss whose signature declares them.
LEARNER_PASSED_OPTIONS = ("p", "clip_low", "clip_high", "num_seqs", "num_tokens", "is_weight", "aggregate_mask")


def passed_options(loss: Callable) -> list[str]:
    """The LEARNER_PASSED_OPTIONS that `loss` declares, i.e. the ones the learner passes to it."""
    declared = inspect.signature(loss).parameters
    return [name for name in LEARNER_PASSED_OPTIONS if name in declared]


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
    "LEARNER_PASSED_OPTIONS",
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
    "passed_options",
    "token_weights",
]
