"""Transformers generation backend: batched `generate` with the KV cache and left padding, CPU or GPU.

It shares the model object with the learner when both live in one process (no copy; `sync_weights` is a no-op),
or copies the trainable weights from `source` when given (another device or dtype, or under torchrun the FSDP2-sharded
learner: each rank's unsharded generation copy), then checks the copy with the sync canary.
"""

from __future__ import annotations

import inspect

import torch

from agentrl.distributed import copy_trainable
from agentrl.policies.base import (
    Completion,
    Constraint,
    SamplingParams,
    allowed_next,
    probe_ids,
    probe_log_probs,
)


def _cache_of(output):
    """The KV cache of a forward's output (`cache` from transformers 5.2x, `past_key_values` before)."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


class HFPolicy:
    """The `Policy` protocol over a transformers model: the learner's own, or (`source` given) a copy of it that each
    sync refreshes from `source` and checks with the canary."""

    free_logprobs = False  # kept only when asked: the [B, N, V] logits they come from cost memory
    matches_learner = True  # it samples with the learner's own model: learner.mismatch.correction=auto is off

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 64,
        source: torch.nn.Module | None = None,
        precision: str = "fp32",
    ):
        """`precision="bf16"` generates under bf16 autocast (the weights stay as they are, fp32 master copies)."""
        self.model, self.tokenizer, self.batch_size, self.source = model, tokenizer, batch_size, source
        self.precision = precision
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.last_canary: float | None = None  # the canary gap after the latest sync (separate copies only)
        self.probe = probe_ids(tokenizer) if source is not None and source is not model else None
        # constrained decoding skips the model on forced tokens (False: token by token through `generate`)
        self.skip_forced = True
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the wrapped model
        self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def sleep(self) -> None:
        """Nothing to free: generation shares the learner's model (or holds a CPU/GPU copy that the next sync needs)."""

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""

    def stats(self) -> dict[str, float]:
        """The canary gap after the latest sync, when generation runs on a separate copy."""
        return {} if self.last_canary is None else {"sync/canary_gap": self.last_canary}

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the learner's trainable weights into the generation model (frozen ones never change), then run the
        canary. A collective when `source` is sharded: every rank calls it at the same point."""
        if self.source is None or self.source is self.model:
            return
        copy_trainable(self.source, self.model)
        # bf16 compute: the sharded learner's mixed precision and the copy's autocast round differently
        self.last_canary = self.check_sync(self.probe, 1e-4 if self.precision == "fp32" else 0.1)

    @torch.no_grad()
    def check_sync(self, probe: list[int], atol: float = 1e-5) -> float:
        """The sync canary: score `probe` with the generation model and with the learner's (`source`); raise when
        they disagree by more than `atol` (a skipped or partial sync, a stale adapter). Returns the max difference
        (0.0 when the two are one object: then they cannot disagree)."""
        if self.source is None or self.source is self.model:
            return 0.0
        scores = [probe_log_probs(model, probe, self.precision) for model in (self.model, self.source)]
        gap = float((scores[0] - scores[1]).abs().max())
        if gap > atol:
            raise RuntimeError(
                f"sync canary: the generation model's log-probs differ from the learner's by {gap:.3g} (> {atol}); "
                "its weights are stale (sync_weights was skipped or incomplete)"
            )
        return gap

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, constraints: list[Constraint | None] | None = None
    ) -> list[Completion]:
        """One completion per prompt. Batches are formed from prompts of similar length to cut padding. With
        `constraints`, a prompt's completion is one of its candidates, sampled token by token over the allowed
        continuations; its log-probs are those of that restricted distribution."""
        if not prompts:
            return []
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
        out: list[Completion | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch_constraints = None if constraints is None else [constraints[i] for i in chunk]
            for i, completion in zip(
                chunk, self._generate_batch([prompts[i] for i in chunk], sampling, batch_constraints)
            ):
                out[i] = completion
        return [c for c in out if c is not None]

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingParams, constraints: list[Constraint | None] | None = None
    ) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [B, T], left-padded
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            att[r, width - len(p) :] = 1
        greedy = sampling.temperature <= 0
        was_training = self.model.training
        self.model.eval()
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        if self.skip_forced and constraints and all(c is not None for c in constraints) and not sampling.min_new_tokens:
            with autocast:
                completions = self._constrained(ids.to(device), att.to(device), sampling, constraints)
            self.model.train(was_training)
            return completions
        allowed = None
        if constraints is not None and any(c is not None for c in constraints):
            every = list(range(self.model.get_output_embeddings().out_features))

            def allowed(row: int, seq: torch.Tensor) -> list[int]:
                if constraints[row] is None:
                    return every
                return allowed_next(constraints[row], seq[width:].tolist()) or [self.eos_id]  # done: pad with EOS

        with autocast:
            result = self._generate(ids.to(device), att.to(device), sampling, greedy, allowed)
        self.model.train(was_training)
        generated = result.sequences[:, width:].cpu()  # [B, N]
        logprobs = None
        if sampling.logprobs:
            temp = 1.0 if greedy else sampling.temperature
            if allowed is not None:  # the processed scores: masked to the allowed tokens (and / temperature)
                steps = torch.stack(result.scores, dim=1).float()
            else:
                steps = torch.stack(result.logits, dim=1).float() / temp  # [B, N, V]
            logprobs = torch.log_softmax(steps, -1).gather(-1, generated[:, : steps.shape[1], None].to(steps.device))
            logprobs = logprobs.squeeze(-1).cpu()
        return [
            self._trim(generated[r].tolist(), sampling, None if logprobs is None else logprobs[r].tolist())
            for r in range(len(prompts))
        ]

    def _constrained(
        self, ids: torch.Tensor, att: torch.Tensor, sampling: SamplingParams, constraints: list[Constraint]
    ) -> list[Completion]:
        """Constrained decoding with one forward per branch point of the candidates' trie: a token that is the only
        continuation needs no logits (its restricted probability is 1, log-prob 0), so runs of them are fed to the
        model together with the next sampled token. The same distribution as token-by-token decoding (restricted
        softmax at the temperature, then top-p; greedy: argmax), in ~3 model calls per action instead of ~12."""
        rows = len(constraints)
        positions = (att.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=att, position_ids=positions, use_cache=True, logits_to_keep=1)
        # logits [B, V]: each row's next-token logits, valid while nothing is pending for that row
        cache, logits = _cache_of(out), out.logits[:, -1].float()
        seen = att.sum(-1)  # [B] real tokens in the cache
        chosen: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        pending: list[list[int]] = [[] for _ in range(rows)]  # chosen, not yet fed to the model
        done = [False] * rows
        while True:
            for r in range(rows):
                while not done[r]:
                    allowed = (
                        allowed_next(constraints[r], chosen[r]) if len(chosen[r]) < sampling.max_new_tokens else []
                    )
                    if not allowed:
                        done[r] = True
                    elif len(allowed) > 1 and pending[r]:
                        break  # a branch point: needs the logits after the pending tokens
                    else:
                        token, lp = (allowed[0], 0.0) if len(allowed) == 1 else self._pick(logits[r], allowed, sampling)
                        chosen[r].append(token)
                        logprobs[r].append(lp)
                        pending[r].append(token)
            feed = [r for r in range(rows) if pending[r] and not done[r]]
            if not feed:
                break
            width = max(len(pending[r]) for r in feed)
            step = torch.full((rows, width), self.pad_id, dtype=torch.long)
            step_att = torch.zeros((rows, width), dtype=torch.long)
            for r in feed:
                step[r, : len(pending[r])] = torch.tensor(pending[r])
                step_att[r, : len(pending[r])] = 1
            att = torch.cat([att, step_att.to(att.device)], dim=1)
            step_pos = seen[:, None] + torch.arange(width, device=att.device)[None]
            out = self.model(
                input_ids=step.to(att.device),
                attention_mask=att,
                position_ids=step_pos,
                use_cache=True,
                **{self._cache_arg: cache},
            )
            cache = _cache_of(out)
            for r in feed:
                logits[r] = out.logits[r, len(pending[r]) - 1].float()
                seen[r] += len(pending[r])
                pending[r] = []
        return [self._trim(chosen[r], sampling, logprobs[r] if sampling.logprobs else None) for r in range(rows)]

    @staticmethod
    def _pick(logits: torch.Tensor, allowed: list[int], sampling: SamplingParams) -> tuple[int, float]:
        """One token among `allowed` (sorted ids) and its log-prob under the restricted distribution."""
        scores = logits[allowed]
        if sampling.temperature <= 0:
            k = int(scores.argmax())
            return allowed[k], float(torch.log_softmax(scores, -1)[k])
        scores = scores / sampling.temperature
        if sampling.top_p < 1.0:  # nucleus over the restricted distribution: drop the tail below 1 - top_p
            order = scores.argsort()
            tail = torch.softmax(scores[order], -1).cumsum(-1) <= 1 - sampling.top_p
            tail[-1] = False
            scores = scores.clone()
            scores[order[tail]] = float("-inf")
        lp = torch.log_softmax(scores, -1)
        k = int(torch.multinomial(lp.exp(), 1))
        return allowed[k], float(lp[k])

    def _generate(self, ids: torch.Tensor, att: torch.Tensor, sampling: SamplingParams, greedy: bool, allowed=None):
        return self.model.generate(
            input_ids=ids,
            attention_mask=att,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens or None,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            stop_strings=sampling.stop or None,
            tokenizer=self.tokenizer if sampling.stop else None,
            return_dict_in_generate=True,
            output_logits=sampling.logprobs,
            output_scores=sampling.logprobs and allowed is not None,
            prefix_allowed_tokens_fn=allowed,
        )

    def _trim(self, ids: list[int], sampling: SamplingParams, logprobs: list[float] | None) -> Completion:
        """Cut at the first EOS (kept: the agent generated it) or at a stop string; the rest is padding."""
        cut, reason = len(ids), "length"
        if self.eos_id in ids:
            cut, reason = ids.index(self.eos_id) + 1, "stop"
        if sampling.stop:
            for k in range(1, cut + 1):
                text = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
                if any(s in text for s in sampling.stop):
                    cut, reason = k, "stop"
                    break
        if reason == "length" and self.pad_id != self.eos_id and self.pad_id in ids:
            cut = ids.index(self.pad_id)
        kept = ids[:cut]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(kept, text, reason, logprobs[:cut] if logprobs is not None else None)
