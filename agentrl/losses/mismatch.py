"""Rollout/training mismatch: the sampler's log-probs (π_rollout, e.g. vLLM's kernels and precision) against the
learner's before the update (π_old). DESIGN.md keeps three log-probs apart; this module compares the first two.

The policy losses' ratio π_θ/π_old (aggregated by the Hölder mean) stays the trust region. The correction is a
separate, detached factor on each token's (or sequence's) loss term, r = π_old/π_rollout:

    tis       w_t = min(r_t, C)                       truncated importance sampling per token (C = learner.mismatch.cap)
    seq_mask  w_i = 1 if 1/C ≤ exp(mean_t log r_t) ≤ C else 0
              a sequence whose geometric-mean ratio leaves [1/C, C] is dropped from the loss (masked IS)
    off       no factor (the metrics are still measured when the sampler reported log-probs)

Token-level losses (grpo) multiply each token's term by w_t; sequence-level losses (holder_seq, holder_token,
gspo, gmpo) multiply each sequence's term by the mean of w_t over its action tokens. Metrics, over action tokens
with a sampler log-prob: mismatch/kl (k3 estimate of KL(π_rollout‖π_old): r − 1 − log r), mismatch/max_abs
(max |log π_old − log π_rollout|), mismatch/is_clip_frac (tokens truncated by tis, or sequences dropped by
seq_mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from agentrl.types import Choice, option


class Correction(Choice):
    auto = "auto"  # off when the sampler is the learner's own model (transformers), else tis (vLLM)
    off = "off"
    tis = "tis"
    seq_mask = "seq_mask"


@dataclass
class MismatchConfig:
    """`learner.mismatch`: correcting for the sampler's log-probs differing from the learner's."""

    correction: Correction = option(Correction.auto, "auto (off for transformers, tis for vLLM) | off | tis | seq_mask")
    cap: float = option(2.0, "C: the tis truncation, and the seq_mask band [1/C, C]")
    warn_kl: float = option(
        0.02, "mismatch/kl above this warns: the sampler is not scoring as the policy (a stale engine?)", resume=True
    )
    stop_kl: float = option(0.0, "mismatch/kl above this stops the run before it saves (0: never)", resume=True)

    def resolve(self, sampler_matches_learner: bool) -> Correction:
        """The correction to apply: `auto` is off when the sampler scores exactly as the learner does (the backend
        says so: policies.backends.sampler_matches_learner), else tis."""
        if self.correction != Correction.auto:
            return Correction(self.correction)
        return Correction.off if sampler_matches_learner else Correction.tis

    def validate(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.cap) and self.cap > 1.0):
            problems.append(f"learner.mismatch.cap must be a finite number > 1, got {self.cap}")
        for name in ("warn_kl", "stop_kl"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                problems.append(f"learner.mismatch.{name} must be a finite number >= 0, got {getattr(self, name)}")
        return problems


def mismatch_weights(
    old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, mask: torch.Tensor, correction: str, cap: float
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The detached correction weights [B, T] (1 off `mask`; None when `correction` is off) and the metrics.

    Args:
        old_log_prob, rollout_log_prob: [B, T] log π_old and log π_rollout.
        mask: [B, T] 1 on action tokens that have a sampler log-prob.
    """
    valid = mask.bool()
    log_r = (old_log_prob.detach().float() - rollout_log_prob.float()).masked_fill(~valid, 0.0)  # [B, T]
    count = valid.sum()
    zero = log_r.new_zeros(())
    metrics = {
        "mismatch/kl": ((torch.exp(log_r) - 1.0 - log_r) * valid).sum() / count.clamp(min=1),
        "mismatch/max_abs": log_r.abs().max() if count > 0 else zero,
    }
    if correction == Correction.off:
        return None, metrics
    if correction == Correction.tis:
        ratio = torch.exp(log_r)
        weights = torch.where(valid, ratio.clamp(max=cap), torch.ones_like(ratio))
        metrics["mismatch/is_clip_frac"] = ((ratio > cap) & valid).sum() / count.clamp(min=1)
        return weights, metrics
    if correction == Correction.seq_mask:
        rows = valid.any(-1)  # [B]
        geo = log_r.sum(-1) / valid.sum(-1).clamp(min=1)  # [B] log of the geometric-mean ratio
        dropped = rows & (geo.abs() > math.log(cap))
        weights = (~dropped).float()[:, None].expand_as(log_r).contiguous()
        metrics["mismatch/is_clip_frac"] = dropped.sum() / rows.sum().clamp(min=1)
        return weights, metrics
    raise ValueError(f"unknown mismatch correction {correction!r}; use one of {', '.join(Correction)}")
