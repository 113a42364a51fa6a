"""The frozen prefix of a partly trained decoder: when only the top decoder layers train (LoRA on the top k layers),
everything below the lowest trained layer is a fixed function of the input ids, so within one update its output
for a sample is the same in every epoch. `FrozenPrefix` keeps that output (the input of the lowest trained layer) per
sample from the first forward over it, and later forwards over the same sample run only the layers from there up.

Exact up to floating-point summation order (real positions never attend to padding, so a row's states do not depend
on the micro-batch it was computed in); checked on its first use against the full forward. A check that fails turns
the cache off for the rest of the run with a warning (every forward then runs in full: the same update, without the
saving) instead of stopping it. On the quickstart's SmolLM2 (LoRA on the top 6 of 30 layers, 2 epochs) it skips the
bottom 24 layers in the second epoch."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

# largest relative difference (Frobenius norm over real positions) allowed between the cached path's hidden states
# and the full forward's on the first check. Measured on SmolLM2 (LoRA on the top 6 layers): 4e-4 under bf16
# autocast on the quickstart (the full path itself differs by 8e-4 between two micro-batch compositions) and 1.01e-2
# on experiment=cpu_math seed 3 (bf16), 3e-8 in fp32; a body that does more than run its layers on the embeddings
# (e.g. scales them) is off by O(1). Above it the cache turns itself off (FrozenPrefix.check).
CHECK_RTOL = 1e-2


def decoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder body of a Hugging Face causal LM (model.model for Llama/Qwen2): embeddings, layers, final norm."""
    return getattr(model, model.base_model_prefix)


def frozen_prefix_start(model: torch.nn.Module) -> int | None:
    """Index of the lowest decoder layer with a trainable parameter when every parameter below it (embeddings
    included) is frozen and the model has no dropout; None when nothing can be cached (all layers train, none
    does, or the body has no `layers` list)."""
    body = decoder_body(model)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return None
    trains = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
    if True not in trains or trains.index(True) == 0:
        return None
    start = trains.index(True)
    if any(p.requires_grad for p in model.get_input_embeddings().parameters()):  # the prefix's input trains
        return None
    dropout = [v for k, v in model.config.to_dict().items() if "dropout" in k and isinstance(v, (int, float))]
    if any(v > 0 for v in dropout):  # a dropout mask would be replayed, not redrawn
        return None
    return start


class FrozenPrefix:
    """Per-sample cache of the input of decoder layer `start` (see the module docstring); the learner empties it
    before and after each update (sample indices name rows of one update)."""

    def __init__(self, start: int):
        self.start = start
        self.states: dict[int, torch.Tensor] = {}  # sample index → [T_i, H]
        self.checked = False  # the cached path was compared with the full forward once
        self.disabled = False  # the check failed: nothing is kept or read from here on

    def clear(self) -> None:
        self.states.clear()

    def has(self, index: list[int]) -> bool:
        return not self.disabled and all(i in self.states for i in index)

    @contextlib.contextmanager
    def capture(self, body: torch.nn.Module, index: list[int], lengths: list[int]) -> Iterator[None]:
        """Inside the block, the forward's input to layer `start` is kept for the rows `index` (real tokens only)."""

        def keep(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            for row, (i, n) in enumerate(zip(index, lengths)):
                self.states[i] = hidden[row, :n].detach()

        handle = body.layers[self.start].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def top(self, body: torch.nn.Module, index: list[int], attention_mask: torch.Tensor) -> torch.Tensor:
        """The body's last hidden states [B, T, H] from the cached states of rows `index`, running only the layers
        from `start` up (the body's own mask, positions and final norm; padding positions are zeros)."""
        rows = [self.states[i] for i in index]
        x = rows[0].new_zeros((len(rows), attention_mask.shape[1], rows[0].shape[-1]))
        for r, state in enumerate(rows):
            x[r, : state.shape[0]] = state
        layers = body.layers
        body.layers = torch.nn.ModuleList(list(layers)[self.start :])
        try:
            return body(inputs_embeds=x, attention_mask=attention_mask, use_cache=False).last_hidden_state
        finally:
            body.layers = layers

    def check(self, full: torch.Tensor, cached: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        """Once: whether the cached path gives the full forward's hidden states at real positions. When it does not
        (a body that does more than run its layers on the embeddings, e.g. scales them; or low-precision rounding
        beyond CHECK_RTOL) the cache turns itself off with a warning, so the run trains on full forwards instead of
        training wrong or stopping. (A resumed run checks again on its first update.)"""
        real = attention_mask.bool()
        full, cached = full[real].float(), cached[real].detach().float()
        gap = float((full - cached).norm() / full.norm().clamp_min(1e-12))
        self.checked = True
        if gap <= CHECK_RTOL:
            return True
        self.disabled = True
        self.states.clear()
        warnings.warn(
            f"learner.frozen_prefix_cache: the cached path differs from the full forward by {gap:.3g} (relative, "
            f"> {CHECK_RTOL}) on this model; the cache is off for the rest of the run (every forward runs in full: "
            "the same update, slower). Set learner.frozen_prefix_cache=false to skip the check.",
            stacklevel=2,
        )
        return False
