"""Pieces shared by the policy losses: advantage-signed clipping in log space, safe exp, reductions, metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# exp() of anything above this overflows fp32; clamp log-values here before exponentiating.
LOG_FLOAT32_MAX = math.log(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class ClipRange:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.low < 1.0) or self.high < 0.0:
            raise ValueError(f"clip range needs 0 <= clip_low < 1 and clip_high >= 0, got ({self.low}, {self.high})")

    @property
    def log_low(self) -> float:
        return math.log1p(-self.low)

    @property
    def log_high(self) -> float:
        return math.log1p(self.high)


def safe_exp(log_value: torch.Tensor) -> torch.Tensor:
    """exp with the argument clamped to fp32's largest finite log, so huge ratios stay finite."""
    return torch.exp(log_value.clamp(max=LOG_FLOAT32_MAX))


def signed_clip_log(log_ratio: torch.Tensor, advantages: torch.Tensor, clip: ClipRange) -> torch.Tensor:
    """Pessimistic clip in log space: Â>0 → min(x, log(1+ε_high)); Â<0 → max(x, log(1−ε_low)); Â=0 → x.

    `advantages` broadcasts against `log_ratio` ([B] with [B], or [B, 1] with [B, T]).
    """
    upper = torch.minimum(log_ratio, torch.full_like(log_ratio, clip.log_high))
    lower = torch.maximum(log_ratio, torch.full_like(log_ratio, clip.log_low))
    return torch.where(advantages > 0, upper, torch.where(advantages < 0, lower, log_ratio))


def sequence_mean(
    per_seq: torch.Tensor, mask: torch.Tensor, num_seqs: int | None, is_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain mean over sequences; divide by the mini-batch's sequence count when given (accumulation). With
    `is_weight` [B, T] (the rollout-mismatch factor, losses/mismatch.py) each sequence's term is first scaled by
    the mean of its action tokens' weights (1 for a row without action tokens)."""
    if is_weight is not None:
        m = mask.float()
        count = m.sum(-1)
        per_seq = per_seq * torch.where(count > 0, (is_weight * m).sum(-1) / count.clamp(min=1.0), 1.0)
    denom = per_seq.shape[0] if num_seqs is None else num_seqs
    return per_seq.sum() / max(denom, 1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values over positions where mask is 1 (0 when there are none)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


@torch.no_grad()
def ratio_metrics(
    log_seq_ratio: torch.Tensor,
    delta: torch.Tensor,
    mask: torch.Tensor,
    clipped: torch.Tensor,
    *,
    per: str,
) -> dict[str, torch.Tensor]:
    """Clip fraction (per sequence or per token), sequence-ratio mean/min/max, ppo-kl = mean(−Δ), and log_ratio_std:
    the standard deviation of Δ over each row's tokens (population std; the tokens a sequence-level loss aggregates
    over), averaged over rows — how unevenly one update moves a reply's tokens (the adaptive p rule `dispersion`)."""
    valid = mask.bool()
    rows = valid.any(-1)
    count = valid.sum(-1).clamp(min=1).float()  # [B]
    d = delta.float().masked_fill(~valid, 0.0)  # masked garbage cannot leak NaN
    centred = (d - d.sum(-1, keepdim=True) / count[:, None]).masked_fill(~valid, 0.0)
    row_std = ((centred * centred).sum(-1) / count).sqrt()  # [B]
    rho = safe_exp(log_seq_ratio[rows]) if rows.any() else torch.ones(1, device=delta.device)
    if per == "seq":
        clip_frac = clipped[rows].mean() if rows.any() else torch.zeros((), device=delta.device)
    else:
        clip_frac = masked_mean(clipped, mask)
    return {
        "clip_frac": clip_frac,
        "ratio_mean": rho.mean(),
        "ratio_min": rho.min(),
        "ratio_max": rho.max(),
        "ppo_kl": masked_mean(-delta, mask),
        "log_ratio_std": row_std[rows].mean() if rows.any() else torch.zeros((), device=delta.device),
    }
