"""Hölder (power) mean of token ratios, and the HölderPO objectives (PAPER.md §1–2).

Shapes: log_prob, old_log_prob, mask are [B, T]; advantages are [B]. `mask` is the action mask: 1 exactly on tokens
the agent generated. All ratio arithmetic runs in fp32 and in log space, whatever the model dtype.
"""

from __future__ import annotations

import torch

from agentrl.losses.common import (
    ClipRange,
    ratio_metrics,
    safe_exp,
    sequence_mean,
    signed_clip_log,
)

GEOMETRIC_EPS = 1e-6


def holder_log_mean(log_ratio: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """Log of the Hölder mean of order p of exp(log_ratio) over valid positions, per row.

        log ρ_p = (logsumexp_t(p·Δ_t) − log|y|) / p          (|p| ≥ 1e-6)
        log ρ_0 = (1/|y|) Σ_t Δ_t                              (geometric mean)

    Args:
        log_ratio: [B, T] Δ = log π_θ − log π_old (any float dtype).
        mask: [B, T] 1 on valid (agent-generated) tokens.
        p: order of the mean; any finite float.
    Returns:
        [B] fp32. Rows without a valid token give 0 (ratio 1); values and gradients stay finite.
    """
    valid = mask.bool()  # [B, T]
    delta = log_ratio.float().masked_fill(~valid, 0.0)  # [B, T]; masked garbage can't leak NaN
    count = valid.sum(-1)  # [B]
    empty = count == 0  # [B]
    n = count.clamp(min=1).float()
    if abs(p) < GEOMETRIC_EPS:
        return delta.sum(-1) / n
    scaled = (p * delta).masked_fill(~valid, float("-inf"))  # [B, T]
    # An all -inf row would give NaN gradients through logsumexp; give empty rows a constant 0 instead.
    scaled = scaled.masked_fill(empty[:, None], 0.0)
    log_mean = (torch.logsumexp(scaled, dim=-1) - torch.log(n)) / p  # [B]
    return log_mean.masked_fill(empty, 0.0)


def token_weights(log_ratio: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """W_t = softmax_t(p·Δ_t) over valid tokens, [B, T] fp32 (0 on masked positions and on empty rows)."""
    valid = mask.bool()
    scaled = (p * log_ratio.float()).masked_fill(~valid, float("-inf"))
    scaled = scaled.masked_fill((~valid).all(-1, keepdim=True), 0.0)
    return torch.softmax(scaled, dim=-1) * valid


@torch.no_grad()
def weight_metrics(log_ratio: torch.Tensor, mask: torch.Tensor, p: float) -> dict[str, torch.Tensor]:
    """Entropy of W and its effective sample size as a fraction of |y| (1 = uniform), mean over non-empty rows."""
    valid = mask.bool()
    rows = valid.any(-1)
    if not rows.any():
        zero = torch.zeros((), device=log_ratio.device)
        return {"weight_entropy": zero, "weight_ess_frac": zero}
    w = token_weights(log_ratio, mask, p)[rows]  # [B', T]
    entropy = -(w * torch.log(w.clamp(min=1e-30))).sum(-1)
    ess = 1.0 / (w * w).sum(-1).clamp(min=1e-30)
    return {
        "weight_entropy": entropy.mean(),
        "weight_ess_frac": (ess / valid[rows].sum(-1).float()).mean(),
    }


def _sequence_objective(
    log_rho: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: ClipRange,
    num_seqs: int | None,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """−Â·clip(ρ) with the advantage-signed pessimistic rule (times the mismatch factor of each sequence, when
    given); returns (loss, clipped log ρ, clipped flags)."""
    adv = advantages.float()
    clipped = signed_clip_log(log_rho, adv, clip)  # [B]
    per_seq = -adv * safe_exp(clipped)  # [B]
    return sequence_mean(per_seq, mask, num_seqs, is_weight), clipped, clipped != log_rho


def holder_seq(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    p: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    num_seqs: int | None = None,
    is_weight: torch.Tensor | None = None,
    aggregate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HölderPO with a sequence-level clip (the paper's main variant).

        L_i = max(−Â_i ρ_{i,p}, −Â_i clip(ρ_{i,p}, 1−ε_low, 1+ε_high)),   loss = mean_i L_i

    `num_seqs` is the number of sequences the mean divides by (the whole mini-batch, so that gradient accumulation
    over micro-batches equals one big batch); default: this call's batch size. `is_weight` [B, T]: the detached
    rollout-mismatch correction (losses/mismatch.py); each sequence's term is scaled by its tokens' mean weight.
    `aggregate_mask` [B, T]: the positions the sequence's mean and clip run over (default: `mask`); under constrained
    decoding the learner passes the chosen tokens (≥ 2 allowed), so forced tokens do not dilute them.
    """
    mask = mask if aggregate_mask is None else aggregate_mask
    delta = log_prob.float() - old_log_prob.float()  # [B, T]
    log_rho = holder_log_mean(delta, mask, p)  # [B]
    loss, clipped, was_clipped = _sequence_objective(
        log_rho, advantages, mask, ClipRange(clip_low, clip_high), num_seqs, is_weight
    )
    metrics = ratio_metrics(log_rho.detach(), delta.detach(), mask, was_clipped.float(), per="seq")
    metrics.update(weight_metrics(delta.detach(), mask, p))
    return loss, metrics


def holder_token(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    p: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    num_seqs: int | None = None,
    is_weight: torch.Tensor | None = None,
    aggregate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HölderPO with a token-level clip: clip each Δ_t (advantage-signed), then ρ = Hölder mean, L_i = −Â_i ρ.

    Equals GRPO's token clip (seq-mean-token-mean) at p = 1 and GMPO at p = 0. `aggregate_mask`: as holder_seq's.
    """
    mask = mask if aggregate_mask is None else aggregate_mask
    delta = log_prob.float() - old_log_prob.float()  # [B, T]
    adv = advantages.float()
    clipped_delta = signed_clip_log(delta, adv[:, None], ClipRange(clip_low, clip_high))  # [B, T]
    log_rho = holder_log_mean(clipped_delta, mask, p)  # [B]
    per_seq = -adv * safe_exp(log_rho)
    loss = sequence_mean(per_seq, mask, num_seqs, is_weight)
    valid = mask.bool()
    token_clipped = ((clipped_delta != delta) & valid).float()
    metrics = ratio_metrics(holder_log_mean(delta, mask, p).detach(), delta.detach(), mask, token_clipped, per="token")
    metrics.update(weight_metrics(clipped_delta.detach(), mask, p))
    return loss, metrics


def gspo(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    num_seqs: int | None = None,
    is_weight: torch.Tensor | None = None,
    aggregate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO: sequence ratio exp(mean Δ) with a sequence-level clip (= holder_seq at p = 0). Takes no p."""
    options = {
        "clip_low": clip_low,
        "clip_high": clip_high,
        "num_seqs": num_seqs,
        "is_weight": is_weight,
        "aggregate_mask": aggregate_mask,
    }
    return holder_seq(log_prob, old_log_prob, advantages, mask, p=0.0, **options)


def gmpo(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    num_seqs: int | None = None,
    is_weight: torch.Tensor | None = None,
    aggregate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GMPO: geometric mean of token-clipped ratios (= holder_token at p = 0). Takes no p."""
    options = {
        "clip_low": clip_low,
        "clip_high": clip_high,
        "num_seqs": num_seqs,
        "is_weight": is_weight,
        "aggregate_mask": aggregate_mask,
    }
    return holder_token(log_prob, old_log_prob, advantages, mask, p=0.0, **options)
