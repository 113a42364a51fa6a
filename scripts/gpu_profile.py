"""Where one learner update's time goes on a GPU, at the Qwen2.5-1.5B shape (random init built from a config: nothing
is downloaded), fp32 master weights and bf16 autocast as the paper configs run it.

    python scripts/gpu_profile.py --out gpu-profile.json    # on a CUDA machine (~2 minutes on an H200)
    python scripts/gpu_profile.py --smoke                   # this code on the CPU with a tiny shape (numbers mean nothing)

What it measures on one ALFWorld-shaped window batch (64 rows, prompts 350-900 tokens, replies 20-120: the batch of
`scripts/benchmark.py --gpu`):
  flops     the update's model FLOPs, counted: decoder body 2·P_body per token, LM head 2·V·H per action token
            only (the learner runs the head there alone), causal attention 2·L·n²·H per row; backward twice the
            forward; the no-grad π_old pass over the rows of the second optimizer step
  update    the whole `Learner.update` (median of 3 after a warm-up): seconds, tokens/s, MFU against the card's
            measured bf16 matmul rate
  phases    the same update run piece by piece, synchronised: π_old pass, forward+backward of each optimizer step,
            gradient clipping + AdamW step
  bounds    forward+backward of the decoder body alone on the same micro-batches (no LM head, no loss): under
            autocast, and with bf16 weights (no per-micro-batch weight casts); and on 16 equal-length rows packed
            to the token budget (what padding-free, full micro-batches would cost)
  budgets   the whole update at micro_batch_tokens 4096 / 16384 / 65536 (micro-batch count, padding, seconds)
  grouping  the whole update with length grouping's padding allowance (scoring.length_grouped, max_padding) at
            0.1 (the learner's) / 0.25 / 0.5 and budgets 16384 / 65536: fewer, fuller micro-batches vs padding
  adamw     one AdamW step over the 1.5B fp32 parameters: torch's default (foreach) vs fused=True
  kernels   torch.profiler over one update: GPU busy time against wall time, kernel time by kind (matmul,
            attention, softmax, elementwise, reductions, optimizer, copies) and the top kernels
Timings are reported, never asserted; BENCHMARKS.md records what a lent GPU measured, with the command.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agentrl import learner as learner_module
from agentrl.learner import Learner, LearnerConfig
from agentrl.prefix_cache import decoder_body
from agentrl.scoring import collate, length_grouped
from agentrl.types import Sample
from scripts.benchmark import alfworld_batch, matmul_peak_bf16, timeit, update_flops

QWEN_1_5B = dict(
    hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VOCAB = 151936
SECTIONS = ("update", "phases", "bounds", "budgets", "adamw", "kernels", "grouping")
KINDS = (  # kernel name fragments → kind, first match wins (names are lower-cased)
    ("attention", ("fmha", "flash", "attention", "attn")),
    ("matmul", ("gemm", "cutlass", "xmma", "cublas", "sm90", "nvjet")),
    ("optimizer", ("multi_tensor", "foreach", "adam")),
    ("softmax", ("softmax",)),
    ("reduction", ("reduce",)),
    ("copy/cast", ("copy", "cast", "memcpy", "memset", "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall seconds of `fn` (benchmark.timeit), each call ending with a device synchronisation."""
    return timeit(lambda: (fn(), sync(device)), repeat=repeat, warmup=warmup)


def body_forward_backward(model: torch.nn.Module, batches: list, autocast: bool) -> None:
    body = decoder_body(model)
    for batch in batches:
        with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        hidden.float().mean().backward()
    model.zero_grad(set_to_none=True)


def optimizer_step(learner: Learner) -> None:
    torch.nn.utils.clip_grad_norm_(learner.params, learner.cfg.max_grad_norm)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)


def phases(learner: Learner, samples: list[Sample], device: torch.device) -> dict[str, float]:
    """One update run piece by piece (the same work as Learner.update, synchronised between pieces)."""
    out = {"old_log_probs_s": 0.0, "forward_backward_s": 0.0, "clip_and_adamw_s": 0.0}
    steps = learner.plan(len(samples))
    sync(device)
    started = time.perf_counter()
    old = learner.old_log_probs(samples, steps)
    sync(device)
    out["old_log_probs_s"] = time.perf_counter() - started
    for k, rows in enumerate(steps):
        started = time.perf_counter()
        learner.accumulate_gradients(samples, rows, None if k == 0 else old, None, 1.0, measure_entropy=k == 0)
        sync(device)
        out["forward_backward_s"] += time.perf_counter() - started
        started = time.perf_counter()
        optimizer_step(learner)
        sync(device)
        out["clip_and_adamw_s"] += time.perf_counter() - started
    return out


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, parts in KINDS if any(part in low for part in parts)), "other")


def kernel_profile(run: Callable[[], Any], device: torch.device, top: int = 15) -> dict[str, Any]:
    """torch.profiler over `run`: wall seconds, summed kernel seconds (GPU busy), kernel seconds by kind, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        run()
        sync(device)
    wall = time.perf_counter() - started
    kernels = [
        e
        for e in prof.key_averages()
        if str(getattr(e, "device_type", "")).endswith("CUDA") and getattr(e, "self_device_time_total", 0) > 0
    ]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_device_time_total / 1e6
    ranked = sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]
    launches = sum(e.count for e in kernels)
    ops = sorted(  # operators by the kernel time they launched themselves: the view when kernels are not listed
        (e for e in prof.key_averages() if not str(getattr(e, "device_type", "")).endswith("CUDA")),
        key=lambda e: -getattr(e, "self_device_time_total", 0),
    )[:top]
    return {
        "profiled_wall_s": wall,
        "kernel_s": busy,
        "gpu_busy_frac": busy / wall,
        "kernel_launches": launches,
        "kernel_s_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top_kernels": [
            {"name": e.key[:120], "kind": kind_of(e.key), "s": e.self_device_time_total / 1e6, "calls": e.count}
            for e in ranked
        ],
        "top_ops": [
            {
                "name": e.key[:80],
                "device_s": getattr(e, "self_device_time_total", 0) / 1e6,
                "cpu_s": e.self_cpu_time_total / 1e6,
                "calls": e.count,
            }
            for e in ops
        ],
    }


def packed_batches(vocab: int, tokens: int, budget: int, device: torch.device) -> list:
    """Equal-length rows (1024 tokens, 70 action tokens) filling `budget` per micro-batch: no padding, full batches."""
    gen = torch.Generator().manual_seed(1)
    n, per = 1024, max(1, budget // 1024)
    rows = [
        Sample(torch.randint(3, vocab, (n,), generator=gen).tolist(), [0] * (n - 70) + [1] * 70, advantage=1.0)
        for _ in range(max(1, tokens // n))
    ]
    return [collate(rows, list(range(i, min(i + per, len(rows)))), device) for i in range(0, len(rows), per)]


def grouping(model: torch.nn.Module, samples: list[Sample], dev: torch.device, smoke: bool) -> dict[str, Any]:
    """The whole update under other padding allowances of length grouping (patched in for the measurement only)."""
    out: dict[str, Any] = {}
    tokens = sum(len(s.input_ids) for s in samples)
    for budget in (512, 2048) if smoke else (16384, 65536):
        for allowance in (0.1, 0.25, 0.5):
            groups = length_grouped(samples, range(len(samples)), budget, max_padding=allowance)
            padded = sum(len(g) * max(len(samples[i].input_ids) for i in g) for g in groups)
            row: dict[str, Any] = {"micro_batches_per_pass": len(groups), "padding_frac": 1 - tokens / padded}
            learner_module.length_grouped = functools.partial(length_grouped, max_padding=allowance)
            times: list[float] = []
            try:
                learner = Learner(model, LearnerConfig(lr=1e-7, micro_batch_tokens=budget), precision="bf16")
                for _ in range(1 if smoke else 4):
                    sync(dev)
                    started = time.perf_counter()
                    learner.update(samples, p=1.0)
                    sync(dev)
                    times.append(time.perf_counter() - started)
                row["update_s_runs"] = times  # the first includes the fresh optimizer's state allocation
                row["update_s_median_after_first"] = statistics.median(times[1:] or times)
            except torch.OutOfMemoryError as err:  # a measured outcome (a micro-batch too large for the card)
                row["error"] = f"out of memory: {str(err).splitlines()[0]}"
            finally:
                learner_module.length_grouped = length_grouped
                learner = None
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            out[f"{budget}/{allowance}"] = row
            print("grouping", budget, allowance, json.dumps(out[f"{budget}/{allowance}"]), flush=True)
    return out


def profile_learner(
    device: str = "cuda",
    shape: dict[str, int] | None = None,
    vocab: int = VOCAB,
    sections: tuple[str, ...] = SECTIONS,
    save: Callable[[dict[str, Any]], None] = lambda report: None,
) -> dict[str, Any]:
    """The sections named, in order; `save` gets the report after each (a later failure keeps what was measured)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    smoke = not cuda
    torch.manual_seed(0)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        **matmul_peak_bf16(device, 8192 if cuda else 256),
    }
    peak = report["matmul_bf16_gflops"] * 1e9
    with dev:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, **(shape or QWEN_1_5B)))
    report["params"] = sum(p.numel() for p in model.parameters())
    report["attn_implementation"] = model.config._attn_implementation
    samples = alfworld_batch(vocab, 64 if cuda else 8, quick=smoke)
    tokens = sum(len(s.input_ids) for s in samples)
    budget = 16384 if cuda else 2048
    learner = Learner(model, LearnerConfig(lr=1e-7, micro_batch_tokens=budget), precision="bf16")
    flops = update_flops(learner, samples)
    groups = length_grouped(samples, range(len(samples)), budget)
    padded = sum(len(g) * max(len(samples[i].input_ids) for i in g) for g in groups)
    report["batch"] = {
        "rows": len(samples),
        "tokens": tokens,
        "action_tokens": sum(s.num_action_tokens for s in samples),
        "micro_batch_tokens": budget,
        "micro_batches_per_pass": len(groups),
        "padding_frac": 1 - tokens / padded,
        "update_model_tflop": flops / 1e12,
    }

    sections_run = {
        "update": lambda: update_section(learner, samples, dev, flops / peak, smoke),
        "phases": lambda: phases(learner, samples, dev),
        "bounds": lambda: bounds(model, samples, groups, budget, dev),
        "budgets": lambda: budgets(model, samples, dev, smoke),
        "adamw": lambda: adamw(learner, dev),
        "kernels": lambda: kernel_profile(lambda: learner.update(samples, p=1.0), dev),
        "grouping": lambda: grouping(model, samples, dev, smoke),
    }
    for name in sections:
        report[name] = sections_run[name]()
        print(name, json.dumps(report[name], indent=1 if name == "kernels" else None), flush=True)
        save(report)
    return report


def update_section(
    learner: Learner, samples: list[Sample], dev: torch.device, floor_s: float, smoke: bool
) -> dict[str, float]:
    """The whole update: median seconds, tokens/s, MFU (`floor_s`: its model FLOPs at the measured matmul rate)."""
    seconds = timed(lambda: learner.update(samples, p=1.0), dev, repeat=1 if smoke else 3)
    tokens = sum(len(s.input_ids) for s in samples)
    out = {"s": seconds, "tokens_per_s": tokens / seconds, "mfu": floor_s / seconds}
    if dev.type == "cuda":
        out["max_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def bounds(
    model: torch.nn.Module, samples: list[Sample], groups: list[list[int]], budget: int, dev: torch.device
) -> dict[str, Any]:
    batches = [collate(samples, g, dev) for g in groups]
    body_s = timed(lambda: body_forward_backward(model, batches, autocast=True), dev, repeat=2)
    packed = packed_batches(model.config.vocab_size, sum(len(s.input_ids) for s in samples), budget, dev)
    packed_s = timed(lambda: body_forward_backward(model, packed, autocast=True), dev, repeat=2)
    with dev:
        bf16 = type(model)(model.config).to(torch.bfloat16)
    bf16_s = timed(lambda: body_forward_backward(bf16, batches, autocast=False), dev, repeat=2)
    return {
        "body_fwd_bwd_autocast_s": body_s,
        "body_fwd_bwd_bf16_weights_s": bf16_s,
        "body_fwd_bwd_packed_s": packed_s,
        "packed_tokens": sum(b.input_ids.numel() for b in packed),
        "packed_micro_batches": len(packed),
        "note": "forward+backward of the decoder body alone, all rows once (the update runs it once per row plus "
        "the π_old forward over half the rows)",
    }


def budgets(model: torch.nn.Module, samples: list[Sample], dev: torch.device, smoke: bool) -> dict[str, Any]:
    out = {}
    for size in (512, 2048) if smoke else (4096, 16384, 65536):
        learner = Learner(model, LearnerConfig(lr=1e-7, micro_batch_tokens=size), precision="bf16")
        out[str(size)] = {
            "micro_batches_per_pass": len(length_grouped(samples, range(len(samples)), size)),
            "update_s": timed(lambda learner=learner: learner.update(samples, p=1.0), dev, repeat=1 if smoke else 2),
        }
    return out


def adamw(learner: Learner, dev: torch.device) -> dict[str, float]:
    """One AdamW step over every trainable parameter: torch's default (foreach) vs fused=True."""
    out = {}
    for name, kwargs in (("foreach", {}), ("fused", {"fused": True})):
        for p in learner.params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.AdamW(learner.params, lr=1e-7, **kwargs)
        out[f"{name}_step_s"] = timed(opt.step, dev, repeat=3)
    learner.optimizer.zero_grad(set_to_none=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--smoke", action="store_true", help="a tiny shape on the CPU: this code runs, numbers mean nothing"
    )
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--out", default="gpu-profile.json")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")

    def save(report: dict[str, Any]) -> None:
        Path(args.out).write_text(json.dumps({"date": started, **report}, indent=1))

    if args.smoke:
        return profile_learner("cpu", SMOKE, vocab=512, sections=tuple(args.sections), save=save)
    return profile_learner("cuda", sections=tuple(args.sections), save=save)


if __name__ == "__main__":
    main()
