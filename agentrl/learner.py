"""The learner's update: plan the optimizer steps, π_old and reference log-probs, then masked policy-loss steps.

    learner = Learner(model, LearnerConfig(lr=1e-6), AlgoConfig())
    metrics = learner.update(samples, p=0.5)

The scoring itself (token log-probs, masks, constraints, the chunked LM head, the prefix cache) is
agentrl/scoring.py. Gradient accumulation divides by mini-batch totals (sequences, tokens), so an update equals one
big batch; under torchrun every rank runs the same collectives.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from agentrl import distributed
from agentrl.algo import AggregateOver, AlgoConfig
from agentrl.errors import ConfigError, unknown_name_message
from agentrl.losses import POLICY_LOSSES, get_policy_loss, kl_k3, passed_options
from agentrl.losses.mismatch import Correction, MismatchConfig, mismatch_weights
from agentrl.policies.lora import adapter_disabled, has_adapters
from agentrl.prefix_cache import FrozenPrefix, frozen_prefix_start
from agentrl.scoring import Batch, collate, forced_positions, length_grouped, token_log_probs
from agentrl.types import Choice, Precision, Sample, option


class PartialMiniBatch(Choice):
    """How a mini-batch short of learner.mini_batch_size (the last one of an epoch) is normalised."""

    rows = "rows"  # by its own rows and tokens: every optimizer step is a mean, whatever its size
    scaled = "scaled"  # as a share of a full one (verl divides by mini_batch_size / micro-batch size): a smaller step


class OldLogProbs(Choice):
    recompute = "recompute"  # a no-grad pass of the learner before the update (verl's default)
    rollout = "rollout"  # the sampler's own log-probs (verl's bypass mode)


@dataclass
class LearnerConfig:
    """The `learner` config group: optimisation, batching and regularisation (the loss itself is `algo`)."""

    lr: float = option(1e-6, "AdamW learning rate (a resumed run applies a new one)", resume=True)
    weight_decay: float = option(0.0, "AdamW weight decay", resume=True)
    max_grad_norm: float = option(1.0, "gradient clipping by global norm", resume=True)
    mini_batch_size: int = option(0, "rows per optimizer step, all ranks together; 0: use learner.mini_batches")
    mini_batches: int = option(2, "optimizer steps per epoch (>= 2 or p has no effect: PAPER.md §7)")
    epochs: int = option(1, "passes over the iteration's samples")
    shuffle: bool = option(True, "each epoch's mini-batches drawn in random order (false: the rollout's order, verl)")
    partial_mini_batch: PartialMiniBatch = option(
        PartialMiniBatch.rows, "a mini-batch short of mini_batch_size: rows (its own mean) | scaled (verl)"
    )
    micro_batch_tokens: int = option(4096, "padded tokens per forward/backward", resume=True)
    logprob_chunk: int = option(1024, "action positions per LM-head chunk", resume=True)
    kl_coef: float = option(0.0, "k3 KL to the frozen reference (verl's kl_loss_coef)")
    # PPO's early stop (Stable-Baselines3, Spinning Up): before each optimizer step after the first, the mini-batch's
    # approximate KL to π_old (the loss's ppo_kl, every rank together) is read; above 1.5 · target_kl the step and
    # the rest of the update are skipped, so one update cannot carry the policy far from the one that sampled.
    target_kl: float | None = option(
        None, "stop an update once its approximate KL to π_old exceeds 1.5 × this; None: off", resume=True
    )
    entropy_coef: float = option(0.0, "entropy bonus: loss −= coef · token-mean entropy")
    activation_checkpointing: bool = option(
        False, "recompute each decoder layer in backward (less memory)", resume=True
    )
    mismatch: MismatchConfig = option(help="π_old/π_rollout correction (losses/mismatch.py)", factory=MismatchConfig)
    # "recompute": a no-grad pass of the learner before the update; "rollout": the sampler's own log-probs, kept by
    # the rollout (no pass; verl's bypass mode). The sampler must score what the learner scores (same weights,
    # temperature and constraints); its gap is logged as mismatch/*.
    old_log_probs: OldLogProbs = option(OldLogProbs.recompute, "π_old for steps after the first: recompute | rollout")
    # with epochs >= 2 and only the top decoder layers training (LoRA on them), keep each sample's input to the
    # lowest trained layer from its first forward and run only the layers from there up afterwards (exact;
    # agentrl/prefix_cache.py). Off under torchrun.
    frozen_prefix_cache: bool = option(False, "run the frozen bottom layers once per sample per update (exact)")

    def validate(self) -> list[str]:
        problems = self.mismatch.validate()
        if self.partial_mini_batch not in list(PartialMiniBatch):
            problems.append(
                unknown_name_message("learner.partial_mini_batch", self.partial_mini_batch, list(PartialMiniBatch))
            )
        if self.old_log_probs not in list(OldLogProbs):
            problems.append(unknown_name_message("learner.old_log_probs", self.old_log_probs, list(OldLogProbs)))
        for name in ("mini_batches", "epochs", "micro_batch_tokens", "logprob_chunk"):
            if getattr(self, name) < 1:
                problems.append(f"learner.{name} must be >= 1, got {getattr(self, name)}")
        if self.mini_batch_size < 0:
            problems.append(
                f"learner.mini_batch_size must be >= 0 (0: use learner.mini_batches), got {self.mini_batch_size}"
            )
        for name in ("lr", "max_grad_norm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                problems.append(f"learner.{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.target_kl is not None and not (math.isfinite(self.target_kl) and self.target_kl > 0):
            problems.append(f"learner.target_kl must be a finite number > 0 or null (off), got {self.target_kl}")
        for name in ("weight_decay", "kl_coef", "entropy_coef"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                problems.append(f"learner.{name} must be a finite number >= 0, got {getattr(self, name)}")
        return problems


def check_correction(correction: Correction, loss: str) -> list[str]:
    """A mismatch correction needs a loss that takes the correction weights (`is_weight`)."""
    if correction == Correction.off or loss not in POLICY_LOSSES or "is_weight" in passed_options(POLICY_LOSSES[loss]):
        return []
    return [
        f"learner.mismatch.correction={correction}: loss {loss!r} takes no is_weight; set "
        "learner.mismatch.correction=off or add an is_weight parameter to the loss"
    ]


class MetricAccumulator:
    """Averages metrics over micro-batches (weighted), keeping min of *_min and max of *_max and */max_abs."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, Any], weight: float = 1.0) -> None:
        for k, v in metrics.items():
            v = float(v)
            if k.endswith(("_max", "/max_abs")):
                self.sums[k] = max(self.sums.get(k, -math.inf), v)
                self.weights[k] = 1.0
            elif k.endswith("_min"):
                self.sums[k] = min(self.sums.get(k, math.inf), v)
                self.weights[k] = 1.0
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] if self.weights[k] else 0.0 for k in self.sums}


def fused_adamw(device: torch.device) -> bool | None:
    """AdamW's `fused` flag for parameters on `device`: the fused kernel on CUDA (one AdamW step over 1.54B fp32
    parameters took 14 ms against 36 ms for torch's default on an H200: BENCHMARKS.md); elsewhere torch's default
    (foreach), the one the CPU learning curves were measured with."""
    return True if device.type == "cuda" else None


class Learner:
    """Owns the optimizer and turns samples into updates of a Hugging Face causal LM.

    Precision: the parameters and the AdamW state stay fp32 (master weights); `precision="bf16"` runs the forward
    and backward under bf16 autocast. AdamW on bf16 parameters is refused: at lr 1e-6 most bf16 weights never move.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: LearnerConfig,
        algo: AlgoConfig | None = None,
        *,
        precision: str = "fp32",
        reply_length: int | None = None,
        seed: int = 0,
        ref_model: torch.nn.Module | Literal["base"] | None = None,
        sampler_matches_learner: bool = True,
        temperature_compensation: bool = False,
    ):
        """Each row is scored at the temperature it was sampled at (Sample.temperature, the rollout's record);
        `temperature_compensation` (exploration.temperature_compensation) multiplies each row's advantage by it;
        `reply_length` the rollout's max_new_tokens (a loss's constant length normaliser defaults to it);
        `ref_model` the KL reference: a frozen model, or "base" for this model with its LoRA adapters off;
        `sampler_matches_learner`: whether the generation backend samples exactly the learner's distribution
        (policies.backends.sampler_matches_learner; learner.mismatch.correction=auto corrects when it does not)."""
        self.algo = algo or AlgoConfig()
        problems = cfg.validate() + self.algo.validate(1, reply_length or 1)
        self.correction = cfg.mismatch.resolve(sampler_matches_learner)
        problems += check_correction(self.correction, self.algo.loss)
        if precision not in (Precision.fp32, Precision.bf16):
            problems.append(unknown_name_message("precision", precision, [Precision.fp32, Precision.bf16]))
        if cfg.kl_coef > 0 and ref_model is None:
            problems.append("learner.kl_coef > 0 needs a reference model; pass ref_model or set kl_coef=0")
        if ref_model == "base" and not has_adapters(model):
            problems.append('ref_model="base" needs a model with LoRA adapters (model.lora.rank > 0)')
        low = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != torch.float32})
        if low:
            problems.append(
                f"trainable parameters are {', '.join(low)}: AdamW would round away most updates at small learning "
                "rates. Load fp32 weights (master copy) and set model.dtype=bf16 for bf16 compute (autocast)."
            )
        if problems:
            raise ConfigError("invalid learner config:\n  " + "\n  ".join(problems))
        self.model, self.cfg, self.precision = model, cfg, precision
        self.temperature_compensation = temperature_compensation
        self.loss_fn = get_policy_loss(self.algo.loss)
        self.passed = passed_options(self.loss_fn)
        self.loss_kwargs = self.algo.loss_options(reply_length or 0)
        self.ref_model = ref_model if cfg.kl_coef > 0 else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        if cfg.activation_checkpointing:  # transformers' per-layer checkpointing, non-reentrant (FSDP2-safe)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_adamw(self.device)
        )
        self.shuffle = torch.Generator().manual_seed(seed)
        self.skipped_steps = 0
        self.optimizer_steps = 0
        self.place = distributed.current()  # torchrun + FSDP2: every rank runs the same collectives (distributed.py)
        self._bar: Any = None  # the update's progress bar (micro-batches of every pass), when shown
        self._step_desc = "update"
        start = self._frozen_prefix_start()
        self._prefix = None if start is None else FrozenPrefix(start)  # emptied before and after each update
        self._active_prefix: FrozenPrefix | None = None  # the cache, while an update runs (sample indices are its)

    @property
    def needs_sampler_logprobs(self) -> bool:
        """Whether updates read the sampler's log-probs: a mismatch correction, or π_old from the rollout."""
        return self.correction != Correction.off or self.cfg.old_log_probs == "rollout"

    def _frozen_prefix_start(self) -> int | None:
        """The decoder layer the prefix cache starts at, when learner.frozen_prefix_cache is on and it can act."""
        if not self.cfg.frozen_prefix_cache or self.cfg.epochs < 2 or self.place.enabled:
            return None
        start = frozen_prefix_start(self.model)
        if start is None:
            warnings.warn(
                "learner.frozen_prefix_cache: nothing to cache (every decoder layer, the embeddings or none trains, "
                "or the model has dropout); running full forwards",
                stacklevel=3,
            )
        return start

    def _micro_batches(self, samples: Sequence[Sample], rows: Sequence[int]) -> list[list[int] | None]:
        """Length-grouped micro-batches of `rows`; with several ranks, padded with None (a zero-weight micro-batch)
        to the largest count of any rank, so every rank runs the same forwards and backwards."""
        groups: list[list[int] | None] = list(length_grouped(samples, rows, self.cfg.micro_batch_tokens))
        if self.place.enabled:
            groups += [None] * (int(distributed.all_max(len(groups))) - len(groups))
        return groups

    def _batch(self, samples: Sequence[Sample], group: list[int] | None) -> Batch:
        """The collated micro-batch, or for padding (None) a two-token row with one action token and advantage 0,
        which touches every parameter (the collectives match) and contributes nothing."""
        if group is None:
            return collate([Sample([0, 0], [0, 1])], [0], self.device)
        return collate(samples, group, self.device)

    def _tick(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)
            self._bar.update(1)

    def _autocast(self):
        enabled = self.precision == "bf16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def log_probs(
        self, model: torch.nn.Module, samples: Sequence[Sample], desc: str = "log-probs"
    ) -> list[torch.Tensor]:
        """Per-sample [T_i] log-probs under `model` (0 off the action mask), without gradients."""
        model.eval()
        out: list[torch.Tensor] = [torch.empty(0)] * len(samples)
        for group in self._micro_batches(samples, range(len(samples))):
            batch = self._batch(samples, group)
            # the frozen layers are the same with adapters off (the "base" reference): its rows fill or read the cache
            prefix = self._active_prefix if model is self.model and group is not None else None
            with self._autocast():
                lp, _ = token_log_probs(model, batch, chunk=self.cfg.logprob_chunk, prefix=prefix)
            for row, i in enumerate(group or []):
                out[i] = lp[row, : len(samples[i].input_ids)].cpu()
            self._tick(desc)
        return out

    def plan(self, n: int) -> list[list[int]]:
        """The optimizer steps of one update: row indices, `mini_batch_size` rows per step (or `mini_batches` equal
        parts), for each epoch; shuffled per epoch, or in the rollout's order with `shuffle=false`. Under torchrun `mini_batch_size` counts the rows of every rank
        together (as verl's ppo_mini_batch_size): each rank takes its 1/world share per step."""
        if self.cfg.mini_batch_size:
            size = max(1, math.ceil(self.cfg.mini_batch_size / self.place.world))
        else:
            size = max(1, math.ceil(n / self.cfg.mini_batches))
        steps = []
        for _ in range(self.cfg.epochs):
            order = torch.randperm(n, generator=self.shuffle).tolist() if self.cfg.shuffle else list(range(n))
            steps += [order[start : start + size] for start in range(0, n, size)]
        if self.place.enabled:  # every rank takes the same number of optimizer steps (empty ones: padding only)
            steps += [[] for _ in range(int(distributed.all_max(len(steps))) - len(steps))]
        return steps

    def reference_log_probs(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """Log-probs under the KL reference: a frozen model, or ("base") this model with its adapters off."""
        if self.ref_model == "base":
            with adapter_disabled(self.model):
                return self.log_probs(self.model, samples, "ref log-probs")
        return self.log_probs(self.ref_model, samples, "ref log-probs")

    def old_log_probs(self, samples: Sequence[Sample], steps: list[list[int]]) -> list[torch.Tensor | None]:
        """π_old for every row that a step after the first reads (None for the others), from one no-grad pass
        before any weight changes. The first step needs none: before any update π_old = π_θ exactly, so it uses
        its own detached training forward (one forward saved; p and the clip act from the second step on)."""
        later = sorted({i for step in steps[1:] for i in step})
        old: list[torch.Tensor | None] = [None] * len(samples)
        if self.cfg.old_log_probs == "rollout":  # the sampler's, at the action positions (0 elsewhere, as a pass)
            for i in later:
                s = samples[i]
                if s.rollout_logprobs is None:
                    raise ValueError("learner.old_log_probs=rollout: a sample has no sampler log-probs")
                row = torch.zeros(len(s.input_ids))
                row[torch.tensor(s.action_mask, dtype=torch.bool)] = torch.tensor(s.rollout_logprobs)
                old[i] = row
            return old
        for i, lp in zip(later, self.log_probs(self.model, [samples[i] for i in later], "old log-probs")):
            old[i] = lp
        return old

    def update(self, samples: Sequence[Sample], p: float, *, progress: bool = False) -> dict[str, float]:
        """Train on `samples` with Hölder order p; returns averaged `train/…` metrics (README "Metrics"). With no
        samples (every group filtered out) one process skips the update; a rank without samples still joins every
        collective of its peers' update."""
        if not samples and not self.place.enabled:
            return {"train/p": p, "train/skipped_steps": float(self.skipped_steps)}
        steps = self.plan(len(samples))
        if progress:  # one bar over every micro-batch of the update: old and reference log-probs, then the steps

            def count(rows: Sequence[int]) -> int:
                return len(length_grouped(samples, rows, self.cfg.micro_batch_tokens))

            later = sorted({i for step in steps[1:] for i in step}) if self.cfg.old_log_probs == "recompute" else []
            total = (count(later) if later else 0) + sum(count(rows) for rows in steps)
            total += count(range(len(samples))) if self.ref_model is not None else 0
            self._bar = tqdm(total=total, desc="update", unit="micro-batch", leave=False)
        if self._prefix is not None:
            self._prefix.clear()
        self._active_prefix = self._prefix
        try:
            old = self.old_log_probs(samples, steps)
            ref = self.reference_log_probs(samples) if self.ref_model is not None else None
            acc = MetricAccumulator()
            kl_stopped = 0  # steps learner.target_kl left out
            for k, rows in enumerate(steps):
                self._step_desc = f"update step {k + 1}/{len(steps)}"
                metrics, stop = self._optimizer_step(samples, rows, None if k == 0 else old, ref, p)
                acc.add(metrics)
                if stop:
                    kl_stopped = len(steps) - k
                    break
        finally:
            self._active_prefix = None
            if self._prefix is not None:
                self._prefix.clear()
            if self._bar is not None:
                self._bar.close()
            self._bar = None
        total_tokens = sum(len(s.input_ids) for s in samples)
        action_tokens = sum(s.num_action_tokens for s in samples)
        metrics = {(k if "/" in k else f"train/{k}"): v for k, v in acc.result().items()}  # mismatch/… as is
        metrics.update(
            {
                "train/p": p,
                "train/skipped_steps": float(self.skipped_steps),
                "train/optimizer_steps": float(len(steps) - kl_stopped),
                "train/kl_stopped_steps": float(kl_stopped),
                "train/action_tokens": float(action_tokens),
                "train/action_token_frac": action_tokens / max(total_tokens, 1),
            }
        )
        return metrics

    def _padded(self, rows: list[torch.Tensor | None], batch: Batch) -> torch.Tensor:
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for r, i in enumerate(batch.index):
            row = rows[i]
            if row is None:
                raise RuntimeError(f"no old log-probs for row {i}: old_log_probs() did not plan for this step")
            out[r, : row.numel()] = row
        return out.to(self.device)

    def accumulate_gradients(
        self,
        samples: Sequence[Sample],
        rows: list[int],
        old: list[torch.Tensor | None] | None,
        ref: list[torch.Tensor] | None,
        p: float,
        *,
        measure_entropy: bool = True,
    ) -> tuple[float, dict[str, float], int]:
        """Backward over one mini-batch (`rows`) in length-grouped micro-batches; `old=None` means on-policy
        (π_old = π_θ detached). The policy entropy is computed when the loss needs it (entropy bonus) or when
        `measure_entropy` asks for the metric. Returns (loss, metrics, padded tokens)."""
        self.model.train()
        entropy_mode = "grad" if self.cfg.entropy_coef > 0 else ("value" if measure_entropy else "none")
        counts = [len(rows), sum(samples[i].num_action_tokens for i in rows)]
        num_seqs, num_tokens = (int(x) for x in distributed.all_sum(counts))  # the mini-batch over every rank
        totals = {"num_seqs": num_seqs, "num_tokens": num_tokens}
        # verl divides each micro-batch's loss by mini_batch_size / micro-batch size whatever the mini-batch holds:
        # a short last mini-batch takes its share of a full step
        share = 1.0
        if self.cfg.partial_mini_batch == PartialMiniBatch.scaled and 0 < num_seqs < self.cfg.mini_batch_size:
            share = num_seqs / self.cfg.mini_batch_size
        acc = MetricAccumulator()
        total_loss, padded = 0.0, 0
        for group in self._micro_batches(samples, rows):
            batch = self._batch(samples, group)
            with self._autocast():
                lp, entropy = token_log_probs(
                    self.model,
                    batch,
                    chunk=self.cfg.logprob_chunk,
                    entropy=entropy_mode,
                    prefix=None if group is None else self._active_prefix,
                )
            if group is None:  # padding: the same forward and backward collectives, no contribution
                (lp.sum() * 0.0).backward()
                self._tick(self._step_desc)
                continue
            padded += batch.input_ids.numel()
            mask = batch.action_mask
            old_lp = lp.detach() if old is None else self._padded(old, batch)
            is_weight, mismatch = None, {}
            if batch.rollout is not None:
                values, has = batch.rollout
                is_weight, mismatch = mismatch_weights(old_lp, values, has, self.correction, self.cfg.mismatch.cap)
            standard = {
                "p": p,
                "clip_low": self.algo.clip_low,
                "clip_high": self.algo.clip_high,
                **totals,
                "is_weight": is_weight,
                "aggregate_mask": self._aggregate_mask(batch),
            }
            loss, metrics = self.loss_fn(
                lp,
                old_lp,
                self._advantages(batch),
                mask,
                **{name: standard[name] for name in self.passed},
                **self.loss_kwargs,
            )
            if entropy is not None:
                token_mean_entropy = (entropy * mask).sum() / max(totals["num_tokens"], 1)
                if self.cfg.entropy_coef > 0:
                    loss = loss - self.cfg.entropy_coef * token_mean_entropy
                metrics["entropy"] = token_mean_entropy.detach() * totals["num_tokens"] / max(int(mask.sum()), 1)
            if ref is not None:
                kl = kl_k3(lp, self._padded(ref, batch), mask, num_tokens=totals["num_tokens"])
                loss = loss + self.cfg.kl_coef * kl
                metrics["kl"] = kl.detach() * totals["num_tokens"] / max(int(mask.sum()), 1)
            metrics.update(mismatch)
            loss = loss * share  # 1 except for verl's short last mini-batch
            loss.backward()
            total_loss += float(loss.detach())
            acc.add(metrics, weight=len(group))
            self._tick(self._step_desc)
        return total_loss, acc.result(), padded

    def _aggregate_mask(self, batch: Batch) -> torch.Tensor | None:
        """What a sequence-level loss aggregates over: None (its action mask) unless algo.aggregate_over=chosen and
        the batch is constrained, then the action tokens the agent chose (forced ones left out)."""
        if self.algo.aggregate_over != AggregateOver.chosen or batch.allowed is None:
            return None
        return batch.action_mask * ~forced_positions(batch)

    def _advantages(self, batch: Batch) -> torch.Tensor:
        """The advantages [B] the loss takes: the samples', times each row's sampling temperature when
        `temperature_compensation` is on (the gradient of log softmax(z/T) with respect to the logits is 1/T as
        large: compensated, a row sampled hot pushes the logits as hard as one sampled at 1; ratios and clipping are
        unchanged)."""
        if not self.temperature_compensation:
            return batch.advantages
        return batch.advantages * batch.temperature

    def _kl_exceeded(self, metrics: dict[str, float], rows: list[int]) -> bool:
        """Whether this mini-batch's approximate KL to π_old (rank-weighted by rows) is above 1.5 · target_kl."""
        if "ppo_kl" not in metrics and rows:
            raise RuntimeError(
                f"learner.target_kl needs the loss to report ppo_kl; loss {self.algo.loss!r} does not: "
                "set learner.target_kl=null or add ppo_kl to its metrics (agentrl.losses.common.ratio_metrics)"
            )
        kl_sum, count = distributed.all_sum([metrics.get("ppo_kl", 0.0) * len(rows), float(len(rows))])
        return count > 0 and kl_sum / count > 1.5 * self.cfg.target_kl

    def _optimizer_step(self, samples, rows, old, ref, p: float) -> tuple[dict[str, float], bool]:
        """One optimizer step over `rows`; returns its metrics and whether learner.target_kl stopped the update (the
        step is then not taken: its gradients are dropped)."""
        # the entropy metric is measured on the first step's rows (the policy before this update): one pass's worth
        total_loss, metrics, padded = self.accumulate_gradients(samples, rows, old, ref, p, measure_entropy=old is None)
        if old is not None and self.cfg.target_kl is not None and self._kl_exceeded(metrics, rows):
            self.optimizer.zero_grad(set_to_none=True)
            return metrics, True
        # sharded (DTensor) gradients: the norm is the global one, and every rank clips by it
        grad_norm = float(distributed.full_value(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)))
        (total_loss,) = distributed.all_sum([total_loss])
        if math.isfinite(total_loss) and math.isfinite(grad_norm):  # a NaN on any rank makes both sums NaN
            self.optimizer.step()
            self.optimizer_steps += 1
        else:
            self.skipped_steps += 1
            warnings.warn(f"skipped an optimizer step: loss={total_loss}, grad_norm={grad_norm}", stacklevel=2)
        self.optimizer.zero_grad(set_to_none=True)
        real_tokens = sum(len(samples[i].input_ids) for i in rows)
        metrics.update(loss=total_loss, grad_norm=grad_norm, padding_frac=1.0 - real_tokens / max(padded, 1))
        return metrics, False

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        """The learner's state; `optimizer=False` leaves the optimizer out (a sharded run saves it with Distributed
        Checkpoint: checkpoint.sharded_state)."""
        return {
            **({"optimizer": self.optimizer.state_dict()} if optimizer else {}),
            "shuffle_rng": self.shuffle.get_state(),
            "skipped_steps": self.skipped_steps,
            "optimizer_steps": self.optimizer_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the config's values win: a resumed run may change them
            group["lr"], group["weight_decay"] = self.cfg.lr, self.cfg.weight_decay
        self.shuffle.set_state(state["shuffle_rng"])
        self.skipped_steps = state["skipped_steps"]
        self.optimizer_steps = state["optimizer_steps"]
