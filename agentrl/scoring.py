"""Scoring: token log-probs of masked samples under a causal LM, exactly what the sampler drew from.

    batch = collate(samples, index, device)                       # padded [B, T] micro-batch with its masks
    logp, entropy = token_log_probs(model, batch, chunk=1024, entropy="value")   # [B, T], 0 off the action mask

Each row is scored at the temperature it was sampled at (Sample.temperature, from the rollout's record of every
turn: agentrl.types.SampledWith), and (constrained decoding) over the tokens that were allowed at each position. The LM head runs only on positions whose next token the agent generated,
in chunks under activation checkpointing, so full-vocabulary fp32 logits are never materialised for the batch. With
a frozen-prefix cache the rows it holds run only the decoder layers above the frozen ones. Micro-batches are grouped
by length (`length_grouped`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from agentrl import distributed
from agentrl.prefix_cache import FrozenPrefix, decoder_body
from agentrl.types import Sample

Entropy = Literal["none", "value", "grad"]  # whether token_log_probs also returns the entropy, and with gradient


@dataclass
class Batch:
    """A padded micro-batch. Every tensor is [B, T] except advantages and temperature [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    advantages: torch.Tensor
    index: list[int]  # positions of these rows in the sample list
    # each row's sampling temperature [B] (Sample.temperature): its log-probs are those of softmax(logits / it)
    temperature: torch.Tensor
    # constrained decoding, over the N action positions in row-major order: which are restricted [N] bool, and the
    # (position, token) pairs allowed there ([M], [M]); None when no row is constrained
    allowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # the sampler's log-probs at action positions [B, T] and the mask of positions that have one [B, T]; None when
    # no row has them
    rollout: tuple[torch.Tensor, torch.Tensor] | None = None


def _allowed_pairs(rows: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    if all(s.allowed is None for s in rows):
        return None
    restricted: list[bool] = []
    positions: list[int] = []
    tokens: list[int] = []
    for s in rows:
        mask = s.action_mask[1:]  # token_log_probs scores positions 1..T-1 (a first token has no context)
        entries = s.allowed if s.allowed is not None else [None] * sum(s.action_mask)
        entries = entries[len(entries) - sum(mask) :]
        for allowed in entries:
            if allowed is not None:
                positions += [len(restricted)] * len(allowed)
                tokens += allowed
            restricted.append(allowed is not None)
    return (
        torch.tensor(restricted, dtype=torch.bool),
        torch.tensor(positions, dtype=torch.long),
        torch.tensor(tokens, dtype=torch.long),
    )


def collate(samples: Sequence[Sample], index: Sequence[int], device: torch.device, pad_id: int = 0) -> Batch:
    rows = [samples[i] for i in index]
    width = max(len(s.input_ids) for s in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    att = torch.zeros((len(rows), width), dtype=torch.long)
    act = torch.zeros((len(rows), width), dtype=torch.long)
    for r, s in enumerate(rows):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        att[r, :n] = 1
        act[r, :n] = torch.tensor(s.action_mask)
    adv = torch.tensor([s.advantage for s in rows], dtype=torch.float32)
    allowed = _allowed_pairs(rows)
    allowed = None if allowed is None else tuple(t.to(device) for t in allowed)
    rollout = None
    if any(s.rollout_logprobs is not None for s in rows):
        values = torch.zeros((len(rows), width), dtype=torch.float32)
        has = torch.zeros((len(rows), width), dtype=torch.long)
        for r, s in enumerate(rows):
            if s.rollout_logprobs is not None:
                positions = act[r].nonzero().squeeze(-1)
                values[r, positions] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
                has[r, positions] = 1
        rollout = (values.to(device), has.to(device))
    temperature = torch.tensor([s.temperature for s in rows], dtype=torch.float32).to(device)  # [B]
    return Batch(
        ids.to(device),
        att.to(device),
        act.to(device),
        adv.to(device),
        list(index),
        temperature,
        allowed=allowed,
        rollout=rollout,
    )


def length_grouped(
    samples: Sequence[Sample], index: Sequence[int], token_budget: int, max_padding: float = 0.1
) -> list[list[int]]:
    """Split `index` into micro-batches of similar length: padded size (rows × longest) within the budget, and
    every row at least (1 − max_padding) × the longest, so padding stays under `max_padding` of computed tokens."""
    order = sorted(index, key=lambda i: -len(samples[i].input_ids))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            longest = len(samples[groups[-1][0]].input_ids)
            fits = (len(groups[-1]) + 1) * longest <= token_budget
            if fits and len(samples[i].input_ids) >= (1.0 - max_padding) * longest:
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def forced_positions(batch: Batch) -> torch.Tensor:
    """[B, T] bool: action tokens that had exactly one allowed token (forced by the grammar of constrained
    decoding: log-prob 0 under the restricted distribution, so no choice of the agent's). All False when no row is
    constrained."""
    out = torch.zeros(batch.action_mask.shape, dtype=torch.bool, device=batch.action_mask.device)
    if batch.allowed is None:
        return out
    restricted, positions, _ = batch.allowed  # over the N scored action positions, row-major
    counts = torch.bincount(positions, minlength=restricted.numel())
    forced = restricted & (counts == 1)  # [N]
    target_pos = batch.action_mask[:, 1:].bool()  # [B, T-1]: as _token_log_probs scores them
    out[:, 1:] = out[:, 1:].masked_scatter(target_pos, forced)
    return out


def _chunk_log_probs(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor,
    entropy: Entropy,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` [n] and, when asked, the entropy [n] of the same (temperature-scaled) distribution
    (with gradient for an entropy bonus, detached for a metric) or an empty tensor. `temperature`: one per
    position [n]. `keep` [n, V] restricts each position to its allowed tokens (constrained decoding): the
    distribution is renormalised over them."""
    logits = lm_head(hidden).float() / temperature[:, None]  # [n, V], only this chunk
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets[:, None]).squeeze(-1)
    if entropy == "none":
        return picked, logp.new_zeros(0)
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        finite = logp if keep is None else logp.masked_fill(~keep, 0.0)  # 0 · log 0 = 0, with a finite gradient
        return picked, -(logp.exp() * finite).sum(-1)


def _keep_mask(
    allowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, start: int, end: int, vocab: int
) -> torch.Tensor | None:
    """[end − start, V] allowed-token mask for action positions start..end, or None if none is restricted."""
    if allowed is None:
        return None
    restricted, positions, tokens = allowed
    if not bool(restricted[start:end].any()):
        return None
    keep = torch.ones((end - start, vocab), dtype=torch.bool, device=restricted.device)
    keep[restricted[start:end]] = False
    inside = (positions >= start) & (positions < end)
    keep[positions[inside] - start, tokens[inside]] = True
    return keep


def token_log_probs(
    model: torch.nn.Module,
    batch: Batch,
    *,
    chunk: int,
    entropy: Entropy = "none",
    prefix: FrozenPrefix | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """See _token_log_probs. A model sharded with FSDP2 runs it as its registered forward method, so the root
    unit's parameters (embeddings, final norm, LM head) are gathered around it and its gradients reduced (no
    prefix cache there)."""
    sharded = getattr(model, distributed.FORWARD_METHOD, None)
    if sharded is not None:
        return sharded(batch, chunk=chunk, entropy=entropy)
    return _token_log_probs(model, batch, chunk=chunk, entropy=entropy, prefix=prefix)


def _token_log_probs(
    model: torch.nn.Module,
    batch: Batch,
    *,
    chunk: int,
    entropy: Entropy = "none",
    prefix: FrozenPrefix | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token_t | tokens_<t) at positions where action_mask is 1, as a [B, T] fp32 tensor (0 elsewhere), and
    the policy entropy at the same positions when `entropy` is "value" (detached) or "grad" (else None). Each row
    is scored at the temperature it was sampled at (`batch.temperature`).

    Runs the decoder body once, then the LM head only on the N action positions, `chunk` at a time; with gradients
    on, each chunk is checkpointed so its [chunk, V] logits are recomputed in backward instead of stored. With a
    `prefix` cache the rows it holds run only the layers above the frozen ones; the others fill it.
    """
    body = decoder_body(model)
    hidden = _body_forward(body, batch, prefix)  # [B, T, H]
    lm_head = model.get_output_embeddings()
    target_pos = batch.action_mask[:, 1:].bool()  # [B, T-1]: token t+1 was generated by the agent
    h = hidden[:, :-1][target_pos]  # [N, H]
    targets = batch.input_ids[:, 1:][target_pos]  # [N]
    per_position = batch.temperature[:, None].expand_as(target_pos)[target_pos]  # [N]: each at its row's
    pieces, entropies = [], []
    vocab = lm_head.weight.shape[0]
    for start in range(0, h.shape[0], chunk):
        end = min(start + chunk, h.shape[0])
        keep = _keep_mask(batch.allowed, start, end, vocab)
        args = (lm_head, h[start:end], targets[start:end], per_position[start:end], entropy, keep)
        if torch.is_grad_enabled():
            piece, ent = checkpoint(_chunk_log_probs, *args, use_reentrant=False)
        else:
            piece, ent = _chunk_log_probs(*args)
        pieces.append(piece)
        entropies.append(ent)

    def scatter(flat: list[torch.Tensor]) -> torch.Tensor:
        full = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=h.device)  # [B, T]
        values = torch.cat(flat) if flat else h.new_zeros(0, dtype=torch.float32)
        full[:, 1:] = full[:, 1:].masked_scatter(target_pos, values)
        return full

    return scatter(pieces), (None if entropy == "none" else scatter(entropies))


def shard(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """FSDP2 over the process group (distributed.shard_model) with the learner's scoring as the registered forward."""
    return distributed.shard_model(model, precision=precision, forward=_token_log_probs)


def _body_forward(body: torch.nn.Module, batch: Batch, prefix: FrozenPrefix | None) -> torch.Tensor:
    """The body's last hidden states [B, T, H]: from the prefix cache when it holds every row (checked against the
    full forward on its first use), else the full forward, filling the cache when there is one."""
    if prefix is not None and prefix.has(batch.index):
        cached = prefix.top(body, batch.index, batch.attention_mask)
        if prefix.checked:
            return cached
        with torch.no_grad():
            full = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        if prefix.check(full, cached, batch.attention_mask):
            return cached
    # no cache, or a failed check disabled it: this batch (with gradients) and the rest run in full
    if prefix is None or prefix.disabled:
        return body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    with prefix.capture(body, batch.index, batch.attention_mask.sum(-1).tolist()):
        return body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
