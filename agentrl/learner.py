"""The learner: masked samples → token log-probs → policy loss (registry, p from the schedule) → optimizer steps.

Memory: the LM head runs only on positions whose next token the agent generated, in chunks under activation
checkpointing, so full-vocabulary fp32 logits are never materialised for the batch. Micro-batches are grouped by
length; gradient accumulation divides by mini-batch totals (sequences, tokens), so an update equals one big batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from agentrl.errors import ConfigError
from agentrl.losses import get_policy_loss, kl_k3
from agentrl.types import Sample


@dataclass
class LearnerConfig:
    loss: str = "holder_seq"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {agg: token-mean} for grpo
    clip_low: float = 0.2
    clip_high: float = 0.2
    lr: float = 1e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mini_batches: int = 2  # optimizer steps per epoch; ≥ 2 or p has no effect (PAPER.md §7)
    epochs: int = 1
    micro_batch_tokens: int = 4096  # padded tokens per forward/backward
    logprob_chunk: int = 1024  # action positions per LM-head chunk
    kl_coef: float = 0.0
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast)
    temperature: float = 1.0  # logits are divided by the sampling temperature, as in generation
    use_rollout_log_probs: bool = False  # else old log-probs are recomputed before the update
    seed: int = 0

    def validate(self) -> list[str]:
        problems = []
        if self.mini_batches < 1 or self.epochs < 1:
            problems.append(f"mini_batches and epochs must be >= 1, got {self.mini_batches}, {self.epochs}")
        if self.dtype not in ("fp32", "bf16"):
            problems.append(f"learner dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if self.micro_batch_tokens < 1 or self.logprob_chunk < 1:
            problems.append("micro_batch_tokens and logprob_chunk must be >= 1")
        if self.temperature <= 0:
            problems.append(f"learner temperature must be > 0, got {self.temperature}")
        if self.kl_coef < 0:
            problems.append(f"kl_coef must be >= 0, got {self.kl_coef}")
        return problems


@dataclass
class Batch:
    """A padded micro-batch. Every tensor is [B, T] except advantages [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    advantages: torch.Tensor
    index: list[int]  # positions of these rows in the sample list


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
    return Batch(ids.to(device), att.to(device), act.to(device), adv.to(device), list(index))


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


def _chunk_log_probs(
    lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `targets` [n] and, from the same logits, the (detached) entropy [n] or an empty tensor."""
    logp = torch.log_softmax(lm_head(hidden).float() / temperature, dim=-1)  # [n, V], only this chunk
    picked = logp.gather(-1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return picked, logp.new_zeros(0)
    with torch.no_grad():
        return picked, -(logp.exp() * logp).sum(-1)


def token_log_probs(
    model: torch.nn.Module, batch: Batch, *, chunk: int, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token_t | tokens_<t) at positions where action_mask is 1, as a [B, T] fp32 tensor (0 elsewhere).

    Runs the decoder body once, then the LM head only on the N action positions, `chunk` at a time; with gradients
    on, each chunk is checkpointed so its [chunk, V] logits are recomputed in backward instead of stored.
    """
    body = getattr(model, model.base_model_prefix)
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state  # [B, T, H]
    lm_head = model.get_output_embeddings()
    target_pos = batch.action_mask[:, 1:].bool()  # [B, T-1]: token t+1 was generated by the agent
    h = hidden[:, :-1][target_pos]  # [N, H]
    targets = batch.input_ids[:, 1:][target_pos]  # [N]
    pieces, entropies = [], []
    for start in range(0, h.shape[0], chunk):
        args = (lm_head, h[start : start + chunk], targets[start : start + chunk], temperature, with_entropy)
        if torch.is_grad_enabled():
            piece, ent = checkpoint(_chunk_log_probs, *args, use_reentrant=False)
        else:
            piece, ent = _chunk_log_probs(*args)
        pieces.append(piece)
        entropies.append(ent)
    flat = torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=h.device)  # [B, T]
    out[:, 1:] = out[:, 1:].masked_scatter(target_pos, flat)
    return out, (torch.cat(entropies) if with_entropy and entropies else None)


class MetricAccumulator:
    """Averages metrics over micro-batches (weighted), keeping min of *_min and max of *_max."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, Any], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            v = float(v)
            if k.endswith("_min"):
                self.sums[k] = min(self.sums.get(k, math.inf), v)
                self.weights[k] = 1.0
            elif k.endswith("_max"):
                self.sums[k] = max(self.sums.get(k, -math.inf), v)
                self.weights[k] = 1.0
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] if self.weights[k] else 0.0 for k in self.sums}


class Learner:
    """Owns the optimizer and turns samples into updates of a Hugging Face causal LM."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, ref_model: torch.nn.Module | None = None):
        problems = cfg.validate()
        if problems:
            raise ConfigError("invalid learner config:\n  " + "\n  ".join(problems))
        self.model = model
        self.cfg = cfg
        self.loss_fn = get_policy_loss(cfg.loss)
        self.ref_model = ref_model if cfg.kl_coef > 0 else None
        if cfg.kl_coef > 0 and ref_model is None:
            raise ConfigError("kl_coef > 0 needs a reference model; pass ref_model or set kl_coef=0")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.device = next(model.parameters()).device
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.skipped_steps = 0
        self.optimizer_steps = 0

    def _autocast(self):
        enabled = self.cfg.dtype == "bf16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def log_probs(
        self, model: torch.nn.Module, samples: Sequence[Sample], *, with_entropy: bool = False
    ) -> tuple[list[torch.Tensor], float]:
        """Per-sample [T_i] log-probs (0 off the action mask) and the mean token entropy when asked."""
        model.eval()
        out: list[torch.Tensor] = [torch.empty(0)] * len(samples)
        ent_sum, ent_n = 0.0, 0
        for group in length_grouped(samples, range(len(samples)), self.cfg.micro_batch_tokens):
            batch = collate(samples, group, self.device)
            with self._autocast():
                lp, ent = token_log_probs(
                    model,
                    batch,
                    chunk=self.cfg.logprob_chunk,
                    temperature=self.cfg.temperature,
                    with_entropy=with_entropy,
                )
            for row, i in enumerate(group):
                out[i] = lp[row, : len(samples[i].input_ids)].cpu()
            if ent is not None:
                ent_sum += float(ent.sum())
                ent_n += ent.numel()
        return out, ent_sum / max(ent_n, 1)

    def _minibatches(self, n: int) -> Iterator[list[int]]:
        for _ in range(self.cfg.epochs):
            order = torch.randperm(n, generator=self.shuffle).tolist()
            size = math.ceil(n / self.cfg.mini_batches)
            for start in range(0, n, size):
                yield order[start : start + size]

    def update(self, samples: Sequence[Sample], p: float, *, progress: bool = False) -> dict[str, float]:
        """Train on `samples` with Hölder order p; returns averaged metrics (see README "Metrics").

        Old log-probs: the first mini-batch is on-policy (π_old = π_θ), so its old log-probs are its own detached
        log-probs from the training forward; only the other samples need a no-grad pass before the first step.
        """
        if not samples:
            raise ValueError("update() got no samples")
        minibatches = list(self._minibatches(len(samples)))
        entropy: float | None = None
        old: list[torch.Tensor | None] = [None] * len(samples)
        if self.cfg.use_rollout_log_probs and all(s.old_log_probs is not None for s in samples):
            old = [torch.tensor(s.old_log_probs, dtype=torch.float32) for s in samples]
        else:
            first = set(minibatches[0])
            rest = [i for i in range(len(samples)) if i not in first]
            if rest:
                rest_lp, entropy = self.log_probs(self.model, [samples[i] for i in rest], with_entropy=True)
                for i, lp in zip(rest, rest_lp):
                    old[i] = lp
        ref = self.log_probs(self.ref_model, samples)[0] if self.ref_model is not None else None
        acc = MetricAccumulator()
        for mb in tqdm(minibatches, desc="update", leave=False, disable=not progress):
            acc.add(self._optimizer_step(samples, mb, old, ref, p))
        metrics = acc.result()
        total_tokens = sum(len(s.input_ids) for s in samples)
        if entropy is not None and "entropy" in metrics:  # training-pass entropy of the first mini-batch, blended
            share = len(minibatches[0]) / len(samples)
            metrics["entropy"] = share * metrics["entropy"] + (1 - share) * entropy
        metrics.update(
            p=p,
            skipped_steps=float(self.skipped_steps),
            action_tokens=float(sum(s.num_action_tokens for s in samples)),
            action_token_frac=sum(s.num_action_tokens for s in samples) / max(total_tokens, 1),
        )
        return metrics

    def _padded(self, rows: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for r, i in enumerate(batch.index):
            out[r, : rows[i].numel()] = rows[i]
        return out.to(self.device)

    def accumulate_gradients(self, samples, mb, old, ref, p: float) -> tuple[float, dict[str, float], int]:
        """Backward over one mini-batch in length-grouped micro-batches; returns (loss, metrics, padded tokens)."""
        self.model.train()
        num_seqs = len(mb)
        num_tokens = sum(samples[i].num_action_tokens for i in mb)
        acc = MetricAccumulator()
        total_loss = 0.0
        padded = 0
        for group in length_grouped(samples, mb, self.cfg.micro_batch_tokens):
            batch = collate(samples, group, self.device)
            padded += batch.input_ids.numel()
            on_policy = old is None or all(old[i] is None for i in group)
            with self._autocast():
                lp, ent = token_log_probs(
                    self.model, batch, chunk=self.cfg.logprob_chunk, temperature=self.cfg.temperature,
                    with_entropy=on_policy,
                )  # fmt: skip
            if on_policy and old is not None:  # keep them: later epochs need these samples' old log-probs
                for row, i in enumerate(group):
                    old[i] = lp[row, : len(samples[i].input_ids)].detach().cpu()
            mask = batch.action_mask
            loss, metrics = self.loss_fn(
                lp, lp.detach() if on_policy else self._padded(old, batch), batch.advantages, mask,
                p=p, clip_low=self.cfg.clip_low, clip_high=self.cfg.clip_high,
                num_seqs=num_seqs, num_tokens=num_tokens, **self.cfg.loss_kwargs,
            )  # fmt: skip
            if ref is not None:
                kl = kl_k3(lp, self._padded(ref, batch), mask, num_tokens=num_tokens)
                loss = loss + self.cfg.kl_coef * kl
                metrics["kl"] = kl.detach() * num_tokens / max(int(mask.sum()), 1)
            if ent is not None:
                metrics["entropy"] = ent.mean() if ent.numel() else torch.zeros(())
            loss.backward()
            total_loss += float(loss.detach())
            acc.add(metrics, weight=len(group))
        return total_loss, acc.result(), padded

    def _optimizer_step(self, samples, mb, old, ref, p: float) -> dict[str, float]:
        total_loss, metrics, padded = self.accumulate_gradients(samples, mb, old, ref, p)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        if math.isfinite(total_loss) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.optimizer_steps += 1
        else:
            self.skipped_steps += 1
            warnings.warn(f"skipped an optimizer step: loss={total_loss}, grad_norm={grad_norm}", stacklevel=2)
        self.optimizer.zero_grad(set_to_none=True)
        real_tokens = sum(len(samples[i].input_ids) for i in mb)
        metrics.update(loss=total_loss, grad_norm=grad_norm, padding_frac=1.0 - real_tokens / max(padded, 1))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "shuffle_rng": self.shuffle.get_state(),
            "skipped_steps": self.skipped_steps,
            "optimizer_steps": self.optimizer_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle.set_state(state["shuffle_rng"])
        self.skipped_steps = state["skipped_steps"]
        self.optimizer_steps = state["optimizer_steps"]
