"""The generation backends behind `model.backend`, built over a model the learner trains (trainer, agentrl-eval).

    policy = make_policy("hf", model, tokenizer, VllmSpec(), max_model_len=4096)

`hf` generates with the learner's own transformers model (or, under torchrun, an unsharded copy refreshed after
every update); `vllm` runs an in-process vLLM engine that each sync streams the learner's weights into.
"""

from __future__ import annotations

import torch

from agentrl.policies.base import Policy
from agentrl.policies.hf import HFPolicy
from agentrl.policies.vllm import VLLMPolicy, VllmSpec

BACKENDS: dict[str, type] = {"hf": HFPolicy, "vllm": VLLMPolicy}


def sampler_matches_learner(backend: str) -> bool:
    """Whether the backend samples from exactly the learner's distribution (transformers) or from its own kernels
    and precision (vLLM): what learner.mismatch.correction=auto resolves by."""
    return BACKENDS[str(backend)].matches_learner


def make_policy(
    backend: str,
    model: torch.nn.Module,
    tokenizer,
    vllm: VllmSpec,
    *,
    max_model_len: int,
    seed: int = 0,
    precision: str = "fp32",
    batch_size: int = 64,
    source: torch.nn.Module | None = None,
) -> Policy:
    """The backend named by model.backend over `model`; `source`: the learner's model when `model` is a separate
    copy that every sync refreshes from it; `max_model_len`: prompt + reply tokens (vLLM's context, unless
    model.vllm.max_model_len sets it)."""
    if backend == "vllm":
        length = vllm.max_model_len or max_model_len
        return VLLMPolicy(model, tokenizer, vllm, max_model_len=length, seed=seed, precision=precision, source=source)
    return HFPolicy(model, tokenizer, batch_size=batch_size, precision=precision, source=source)
