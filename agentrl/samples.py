"""Episodes → learner samples, with the action mask exactly on generated tokens (see agentrl/types.py).

window: one sample per turn = that turn's exact prompt ids + its generated ids (mask 1 on the generated ids).
full:   one sample per episode = the whole conversation as the policy saw it at its last turn + the last reply;
        each turn's prompt is a prefix of the next, so every turn's generated ids sit at known offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.advantages import grpo_advantages
from agentrl.types import Episode, Sample


@dataclass
class AdvantageConfig:
    std_normalize: bool = True  # False: Dr.GRPO
    eps: float = 1e-6
    statistics: str = "rows"  # "rows": over all step-rows of a group (verl-agent) | "episodes": one value per episode


def _window_samples(episode: Episode) -> list[Sample]:
    return [
        Sample(
            input_ids=turn.prompt_ids + turn.completion_ids,
            action_mask=[0] * len(turn.prompt_ids) + [1] * len(turn.completion_ids),
            reward=episode.total_reward,
            group_id=episode.group_id,
            episode_id=episode.episode_id,
            turn_index=k,
        )
        for k, turn in enumerate(episode.turns)
    ]


def _full_sample(episode: Episode) -> Sample:
    last = episode.turns[-1]
    ids = last.prompt_ids + last.completion_ids
    mask = [0] * len(ids)
    for turn in episode.turns:
        start = len(turn.prompt_ids)
        if ids[start : start + len(turn.completion_ids)] != turn.completion_ids:
            raise ValueError(f"episode {episode.episode_id}: turn prompts are not prefixes of the conversation")
        mask[start : start + len(turn.completion_ids)] = [1] * len(turn.completion_ids)
    return Sample(ids, mask, reward=episode.total_reward, group_id=episode.group_id, episode_id=episode.episode_id)


def build_samples(episodes: list[Episode], mode: str = "window", adv: AdvantageConfig | None = None) -> list[Sample]:
    """Samples with advantages filled in from group statistics of episode returns."""
    adv = adv or AdvantageConfig()
    if mode not in ("window", "full"):
        raise ValueError(f"sample mode must be 'window' or 'full', got {mode!r}")
    if adv.statistics not in ("rows", "episodes"):
        raise ValueError(f"advantage statistics must be 'rows' or 'episodes', got {adv.statistics!r}")
    samples: list[Sample] = []
    for episode in episodes:
        if episode.turns:
            samples += _window_samples(episode) if mode == "window" else [_full_sample(episode)]
    if not samples:
        return []
    rewards = torch.tensor([s.reward for s in samples])
    values = grpo_advantages(
        rewards,
        [s.group_id for s in samples],
        std_normalize=adv.std_normalize,
        eps=adv.eps,
        episode_ids=[s.episode_id for s in samples] if adv.statistics == "episodes" else None,
    )
    for sample, value in zip(samples, values.tolist()):
        sample.advantage = value
    return samples
