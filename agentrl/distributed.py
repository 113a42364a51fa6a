"""Many processes with PyTorch's own stack: torchrun launches them, FSDP2 (`fully_shard`) shards the model per
decoder layer, Distributed Checkpoint saves it (agentrl/checkpoint.py); README "Many GPUs / many nodes".

The trainer splits each iteration's tasks across ranks by whole groups (a group's members on one rank, so group
statistics stay local); every rank plays its groups with its own env pool and generation backend, fed from its own
unsharded copy of the weights, refreshed after every update (`copy_trainable`). Samples are never gathered.

The learner computes exactly the update one process would compute on the union of every rank's samples:
  - sequence and token counts are all-reduced per mini-batch, so each rank's loss is already divided by the global
    totals, and gradients are summed across ranks (FSDP's gradient divide factor is set to 1);
  - every rank runs the same number of optimizer steps, and within each, of micro-batches (forwards with and
    without gradients): a rank with fewer pads with a zero-weight micro-batch, so collectives never hang;
  - a non-finite loss or gradient on any rank skips the step on every rank;
  - gradient clipping runs on the sharded (DTensor) gradients; the norm is the global one.
On one process every helper here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The process's place as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    return Dist(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def current() -> Dist:
    """This process's place in the initialised process group (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init(device_type: str = "cpu") -> Dist:
    """Join the process group torchrun set up (nccl on GPUs, gloo on CPU); a no-op for one process."""
    place = from_env()
    if place.enabled and not dist.is_initialized():
        # on GPUs nccl moves CUDA tensors and gloo the small CPU ones (counts, metrics, objects)
        dist.init_process_group("cuda:nccl,cpu:gloo" if device_type == "cuda" else "gloo")
        if device_type == "cuda":
            torch.cuda.set_device(place.local_rank)
    return current()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks of a Hugging Face causal LM (Qwen2, Llama, SmolLM2: model.model.layers)."""
    body = getattr(model, model.base_model_prefix, model)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers found at {model.base_model_prefix}.layers")
    return list(layers)


FORWARD_METHOD = "agentrl_token_log_probs"  # the learner's forward, registered with FSDP on a sharded model


def shard_model(
    model: torch.nn.Module, *, precision: str = "fp32", forward: Callable[..., Any] | None = None
) -> torch.nn.Module:
    """FSDP2 over the current process group: one unit per decoder layer, the rest (embeddings, final norm, LM
    head; tied embeddings stay one parameter) in the root unit. Parameters stay fp32 (master weights); with
    precision="bf16" each unit computes in bf16 and reduces gradients in fp32. Gradients are summed across ranks
    (divide factor 1): the learner divides by the global counts itself. `forward(model, …)`: a function the caller
    runs instead of model.forward (the learner's token log-probs), registered as FORWARD_METHOD (scoring.shard)."""
    import types

    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no pre-multiplied sum)
    # the learner runs the body and then the LM head in chunks, not model.forward: registering that as a forward
    # method gathers the root unit's parameters around it and reduces their gradients after backward
    if forward is not None:
        setattr(model, FORWARD_METHOD, types.MethodType(forward, model))
        register_fsdp_forward_method(model, FORWARD_METHOD)
    return model


def say(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only (everything under one process): console output of a torchrun job comes once."""
    if current().main:
        print(*args, **kwargs)


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def shutdown(*, clean: bool = True) -> None:
    """Destroy the process group (if any). `clean` (every rank got here normally): a barrier first, so no rank tears
    its gloo connections down while a peer still uses them (gloo then aborts the peer: "terminate called without an
    active exception"). After an error the barrier is skipped: a peer may never arrive."""
    if not (dist.is_available() and dist.is_initialized()):  # a vLLM engine's shutdown may have done it
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable object)."""
    if not current().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank; [value] on one process."""
    if not current().enabled:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def split(items: Sequence[T], place: Dist | None = None) -> list[T]:
    """This rank's share of `items`: positions rank, rank + world, … (everything on one process)."""
    place = place or current()
    return list(items[place.rank :: place.world])


def merge(shares: list[list[T]]) -> list[T]:
    """The inverse of `split`: per-rank shares (gather's output) back in their original order."""
    out: list[T] = []
    for k in range(max((len(s) for s in shares), default=0)):
        out += [s[k] for s in shares if k < len(s)]
    return out


def mean_metrics(row: dict[str, float]) -> dict[str, float]:
    """Per-rank metrics combined: the mean over the ranks that report a key; the largest value for `…/max_abs` and
    `…_max` keys, the smallest for `…_min`. Rank-local quantities (clip fractions, entropies, timings) become their
    mean over ranks; global ones (loss, gradient norm, p) are equal on every rank and stay as they are."""
    rows = gather(row)
    if len(rows) == 1:
        return row
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [float(r[key]) for r in rows if key in r]
        if key.endswith(("/max_abs", "_max")):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        else:
            out[key] = sum(values) / len(values)
    return out


@torch.no_grad()
def copy_trainable(sharded: torch.nn.Module, full: torch.nn.Module) -> None:
    """Refresh `full` (an unsharded copy made before sharding: same parameter names) from the sharded model: every
    trainable parameter is all-gathered and copied in. Frozen ones (a LoRA base) never change, so they are skipped.
    A collective: every rank calls it at the same point."""
    target = dict(full.named_parameters())
    for name, param in sharded.named_parameters():
        if param.requires_grad:
            target[name].copy_(full_value(param.detach()))


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of parameters holding a NaN or inf on any rank (each rank checks its shards; the names are pooled)."""
    local = [name for name, p in model.named_parameters() if not torch.isfinite(_local(p)).all()]
    return sorted({n for names in gather(local) for n in names})


def _local(x: torch.Tensor) -> torch.Tensor:
    return x.to_local() if hasattr(x, "to_local") else x


def all_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum over ranks (float64); the values themselves on one process."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_max(value: float, device: torch.device | str = "cpu") -> float:
    """The largest value over ranks; the value itself on one process."""
    if not current().enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def full_value(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (a plain tensor as it is)."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x
