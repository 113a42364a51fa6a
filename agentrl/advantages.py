"""Group-relative advantages (GRPO family), one scalar per sample."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
    episode_ids: Sequence[Hashable] | None = None,
) -> torch.Tensor:
    """Â_i = (R_i − mean_G R) / (std_G R + eps), or R_i − mean_G R with std_normalize=False (Dr.GRPO).

    Args:
        rewards: [N] one reward per row (in multi-turn window mode: the episode's return, repeated per step-row).
        group_ids: N group keys; rows of one group share a task instance and seed.
        episode_ids: when given (window mode), group statistics are computed over episodes — one value per distinct
            episode id — instead of over all step-rows (verl-agent's default, which weights long episodes more).
    Returns:
        [N] fp32. A group whose rewards are all equal, or that has one member, gets zeros. std is unbiased.
    """
    rewards = rewards.float()
    if len(group_ids) != rewards.shape[0]:
        raise ValueError(f"{len(group_ids)} group ids for {rewards.shape[0]} rewards")
    if episode_ids is not None and len(episode_ids) != rewards.shape[0]:
        raise ValueError(f"{len(episode_ids)} episode ids for {rewards.shape[0]} rewards")
    out = torch.zeros_like(rewards)
    rows_by_group: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_ids):
        rows_by_group.setdefault(g, []).append(i)
    for rows in rows_by_group.values():
        idx = torch.tensor(rows)
        if episode_ids is None:
            stats = rewards[idx]
        else:
            first_row: dict[Hashable, int] = {}
            for i in rows:
                first_row.setdefault(episode_ids[i], i)
            stats = rewards[torch.tensor(list(first_row.values()))]
        if stats.numel() < 2:
            continue
        centred = rewards[idx] - stats.mean()
        if std_normalize:
            std = stats.std()
            centred = centred / (std + eps) if std > 0 else torch.zeros_like(centred)
        out[idx] = centred
    return out


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
    """G_t = r_t + γ·G_{t+1} for one episode's per-step rewards (G after the last step is 0)."""
    out = [0.0] * len(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out
