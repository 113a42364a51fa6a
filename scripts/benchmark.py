"""Benchmarks: where learner and rollout time goes, measured as ratios inside one process (machines are noisy).

    python scripts/benchmark.py --quick                 # tiny model, seconds (CI runs this to prove it works)
    python scripts/benchmark.py                         # SmolLM2-135M-Instruct, a few minutes per section on 2 cores
    python scripts/benchmark.py --sections learner loss --out bench.json
    python scripts/benchmark.py --gpu                   # on a GPU: random-init Qwen2.5-0.5B / 1.5B shapes, bf16
    python scripts/gpu_profile.py                       # on a GPU: where one learner update's time goes (1.5B)

Sections:
  peak     large fp32 and bf16 matmuls: this machine's achievable FLOP/s
  learner  one learner update on a multi-turn ALFWorld-shaped batch (variable lengths) vs the plain lower bound
           (one forward+backward of the same model on the same tokens, no RL bookkeeping); MFU vs the fp32 peak
  loss     holder_seq / holder_token vs token-level grpo, forward+backward on [B, T]; share of a learner step
  padding  computed tokens that are padding, with and without length-grouped micro-batches; peak memory (RSS) of
           log-prob computation with full-vocabulary logits vs our chunked path (each in a fresh subprocess)
  rollout  ALFWorld episodes: generation / env / prompt time; env steps/s with 1 and 2 workers
  hub      the same 2-turn cue task as a native env (CueBandit), as a verifiers MultiTurnEnv (tests/vf_cue.py) and as
           an OpenEnv Environment served on loopback (tests/openenv_cue.py), through the rollout with a scripted
           policy: episodes/s in-process and with 2 env workers (the adapters' cost)
  constrained  greedy constrained decoding of ALFWorld prompts: token by token vs skipping forced tokens (same replies)
  lora     full fine-tuning vs LoRA (rank 16, every projection): trainable parameters, peak memory (RSS, each in a
           fresh subprocess) and update time of the same learner update on the same batch
  vllm     the quickstart rollout with the transformers vs the vLLM backend (same process, same model), vLLM weight
           sync and canary times; run in .venv-vllm (make setup-vllm, plus pip install -e '.[alfworld]')
  dist     one learner update: one process vs two torchrun ranks (FSDP2, gloo, half the batch each)
  peer     TRL's GRPOTrainer vs our trainer on the identical single-turn GSM8K workload (same model, prompts,
           group size, forced completion length, fp32, CPU, transformers generation); needs `pip install trl`
           in the benchmark environment (not a project dependency)
Results print as a table and go to --out (JSON). Timed numbers never gate CI.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agentrl.algo import AlgoConfig
from agentrl.learner import Learner, LearnerConfig
from agentrl.losses import POLICY_LOSSES
from agentrl.prefix_cache import decoder_body
from agentrl.scoring import collate, length_grouped
from agentrl.types import Sample


def timeit(fn, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak(n: int) -> dict[str, float]:
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        seconds = timeit(lambda a=a, b=b: a @ b, repeat=3)
        out[f"matmul_{name}_gflops"] = 2 * n**3 / seconds / 1e9
    return out


def alfworld_batch(vocab: int, n: int, quick: bool, seed: int = 0) -> list[Sample]:
    """Window-mode samples shaped like ALFWorld turns: prompts 350-900 tokens, replies 20-120 (quick: /8)."""
    rng = random.Random(seed)
    scale = 8 if quick else 1
    out = []
    for i in range(n):
        prompt, reply = rng.randint(350, 900) // scale, rng.randint(20, 120) // scale
        ids = [rng.randrange(3, vocab) for _ in range(prompt + reply)]
        out.append(Sample(ids, [0] * prompt + [1] * reply, advantage=rng.uniform(-1, 1), group_id=str(i // 4)))
    return out


def load(quick: bool):
    from agentrl.policies.models import ModelSpec, load_model

    spec = (
        ModelSpec(name="tiny-qwen2", hidden_size=128, num_layers=4)
        if quick
        else ModelSpec(name="smollm2-135m-instruct")
    )
    model, tok = load_model(spec)
    return model, tok


def bench_learner(model, samples: list[Sample], peak: float) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    tokens = sum(len(s.input_ids) for s in samples)
    learner = Learner(model, LearnerConfig(lr=1e-7, mini_batches=2, micro_batch_tokens=4096))
    update_s = timeit(lambda: learner.update(samples, p=1.0), repeat=2)
    single = Learner(model, LearnerConfig(lr=1e-7, mini_batches=1, micro_batch_tokens=4096))
    single_s = timeit(lambda: single.update(samples, p=1.0), repeat=2)
    bf16 = Learner(model, LearnerConfig(lr=1e-7, mini_batches=2, micro_batch_tokens=4096), precision="bf16")
    bf16_s = timeit(lambda: bf16.update(samples, p=1.0), repeat=2)
    groups = length_grouped(samples, range(len(samples)), 4096)

    def plain_forward_backward():
        for g in groups:
            batch = collate(samples, g, torch.device("cpu"))
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float().mean().backward()
        model.zero_grad(set_to_none=True)

    plain_s = timeit(plain_forward_backward, repeat=2)
    flops = 6 * params * tokens
    return {
        "tokens": tokens,
        "params": params,
        "update_s": update_s,
        "plain_fwd_bwd_s": plain_s,
        "update_tokens_per_s": tokens / update_s,
        "plain_tokens_per_s": tokens / plain_s,
        "learner_vs_plain": plain_s / update_s,
        "single_step_update_s": single_s,
        "single_step_vs_plain": plain_s / single_s,
        "bf16_autocast_update_s": bf16_s,
        "bf16_autocast_speedup": update_s / bf16_s,
        "note": "update = old-logprob forward (no grad) + forward/backward over 2 mini-batches; single step (one "
        "on-policy mini-batch) needs no old-logprob pass; plain = 1 fwd+bwd with full-vocabulary logits",
        "mfu_vs_fp32_peak": flops / update_s / (peak * 1e9),
    }


def bench_losses(b: int, t: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    lp = (torch.randn(b, t, generator=g) * 0.1).requires_grad_()
    old = torch.randn(b, t, generator=g) * 0.1
    adv = torch.randn(b, generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.3).float()
    out = {}
    for name in ("grpo", "holder_seq", "holder_token"):

        def run(name=name):
            options = {"p": 1.5} if "p" in inspect.signature(POLICY_LOSSES[name]).parameters else {}
            loss, _ = POLICY_LOSSES[name](lp, old, adv, mask, **options)
            loss.backward()
            lp.grad = None

        out[f"{name}_ms"] = 1000 * timeit(run, repeat=20, warmup=3)
    for name in ("holder_seq", "holder_token"):
        out[f"{name}_minus_grpo_ms"] = out[f"{name}_ms"] - out["grpo_ms"]
    return out


def padding_fraction(samples: list[Sample], budget: int) -> dict[str, float]:
    rng = random.Random(0)
    order = list(range(len(samples)))
    rng.shuffle(order)

    def frac(groups):
        padded = sum(len(g) * max(len(samples[i].input_ids) for i in g) for g in groups)
        return 1 - sum(len(s.input_ids) for s in samples) / padded

    per = max(1, budget // max(len(s.input_ids) for s in samples))
    naive = [order[k : k + per] for k in range(0, len(order), per)]
    return {
        "padding_frac_naive": frac(naive),
        "padding_frac_length_grouped": frac(length_grouped(samples, order, budget)),
    }


LOGPROB_CHILD = """
import sys, resource, torch
sys.path.insert(0, {root!r})
from scripts.benchmark import load, alfworld_batch
from agentrl.scoring import collate, token_log_probs
model, tok = load({quick})
samples = alfworld_batch(len(tok), 4, {quick})
batch = collate(samples, range(4), torch.device("cpu"))
def status(key):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS:")
if {chunked}:
    lp, _ = token_log_probs(model, batch, chunk=1024)
else:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    lp = torch.log_softmax(logits, -1)
lp.sum().backward()
print((status("VmHWM:") - base) / 1024)
"""


LORA_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from agentrl.learner import Learner, LearnerConfig
from agentrl.policies.lora import LoraSpec
from agentrl.policies.models import ModelSpec, load_model
from scripts.benchmark import alfworld_batch

def status(key):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key))
torch.manual_seed(0)
spec = ModelSpec(name="tiny-qwen2", hidden_size=128, num_layers=4) if {quick} else ModelSpec(name="smollm2-135m-instruct")
spec.lora = LoraSpec(rank={rank})
model, tok = load_model(spec)
samples = alfworld_batch(len(tok), 16 if {quick} else 8, {quick})
learner = Learner(model, LearnerConfig(lr=1e-6, mini_batches=2, micro_batch_tokens=4096))
learner.update(samples, p=1.0)  # warm-up: optimizer state allocated
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
times = []
for _ in range(2):
    started = time.perf_counter()
    learner.update(samples, p=1.0)
    times.append(time.perf_counter() - started)
print(json.dumps({{
    "trainable_params": sum(p.numel() for p in learner.params),
    "total_params": sum(p.numel() for p in model.parameters()),
    "rss_mb": status("VmHWM:") / 1024,
    "update_s": min(times),
}}))
"""


DIST_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from agentrl import distributed
from agentrl.learner import Learner, LearnerConfig
from agentrl.scoring import shard
from agentrl.policies.models import ModelSpec, load_model
from scripts.benchmark import alfworld_batch

place = distributed.init("cpu")
torch.manual_seed(0)
spec = ModelSpec(name="tiny-qwen2", hidden_size=128, num_layers=4) if {quick} else ModelSpec(name="smollm2-135m-instruct")
model, tok = load_model(spec)
if place.enabled:
    shard(model)
samples = alfworld_batch(len(tok), 16 if {quick} else 8, {quick})
mine = samples[place.rank :: place.world]
learner = Learner(model, LearnerConfig(lr=1e-6, mini_batches=2, micro_batch_tokens=4096))
learner.update(mine, p=1.0)  # warm-up
times = []
for _ in range(2):
    started = time.perf_counter()
    learner.update(mine, p=1.0)
    times.append(time.perf_counter() - started)
if place.main:
    print("RESULT " + json.dumps({{"update_s": min(times), "tokens": sum(len(s.input_ids) for s in samples)}}))
"""


def bench_dist(quick: bool) -> dict[str, Any]:
    """One learner update on the ALFWorld-shaped batch: one process vs two ranks (torchrun, FSDP2, gloo) each
    holding half the samples. On a 2-core CPU the ranks share the cores (1 thread each): the point is overhead."""
    import socket
    import tempfile

    root = str(Path(__file__).resolve().parents[1])
    script = Path(tempfile.mkdtemp()) / "dist_child.py"
    script.write_text(DIST_CHILD.format(root=root, quick=quick))
    out: dict[str, Any] = {}
    for ranks, threads in ((1, 2), (1, 1), (2, 1)):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={port}"]
        env = {**__import__("os").environ, "OMP_NUM_THREADS": str(threads)}
        res = subprocess.run([*cmd, str(script)], capture_output=True, text=True, cwd=root, env=env)
        name = f"{ranks}rank_{threads}thread"
        lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode != 0 or not lines:  # a measured outcome too: record it, don't hide it
            out[f"{name}_error"] = f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"
            continue
        result = json.loads(lines[-1].removeprefix("RESULT "))
        out[f"{name}_update_s"] = result["update_s"]
        out[f"{name}_tokens_per_s"] = result["tokens"] / result["update_s"]
    if "1rank_2thread_update_s" in out and "2rank_1thread_update_s" in out:
        out["two_ranks_vs_one_process_time_ratio"] = out["2rank_1thread_update_s"] / out["1rank_2thread_update_s"]
    return out


def bench_lora(quick: bool) -> dict[str, Any]:
    """Full fine-tuning vs LoRA rank 16 on the same model and batch, each in a fresh process (peak RSS)."""
    root = str(Path(__file__).resolve().parents[1])
    out: dict[str, Any] = {}
    for name, rank in (("full", 0), ("lora16", 16)):
        res = subprocess.run(
            [sys.executable, "-c", LORA_CHILD.format(root=root, quick=quick, rank=rank)],
            capture_output=True,
            text=True,
            cwd=root,
        )
        if res.returncode != 0:  # a measured outcome too: record it, don't hide it
            out[f"{name}_error"] = f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"
            continue
        for key, value in json.loads(res.stdout.strip().splitlines()[-1]).items():
            out[f"{name}_{key}"] = value
    if "full_update_s" in out and "lora16_update_s" in out:
        out["lora_update_time_ratio"] = out["lora16_update_s"] / out["full_update_s"]
        out["lora_peak_rss_ratio"] = out["lora16_rss_mb"] / out["full_rss_mb"]
    return out


def logprob_memory(quick: bool) -> dict[str, float]:
    root = str(Path(__file__).resolve().parents[1])
    out = {}
    for chunked in (False, True):
        code = LOGPROB_CHILD.format(root=root, quick=quick, chunked=chunked)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
        key = "logprob_peak_mb_" + ("chunked" if chunked else "full_logits")
        if res.returncode != 0:  # a measured outcome too (e.g. killed for memory): record it, don't hide it
            out[key] = f"failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:] or ''}"
            continue
        out[key] = float(res.stdout.strip().splitlines()[-1])
    return out


@functools.cache
def alfworld_games() -> Path:
    """Twelve generated ALFWorld training games in a fresh temporary folder, made once per process (~10 s)."""
    import tempfile

    from scripts.generate_alfworld import main as generate

    data = Path(tempfile.mkdtemp()) / "alfworld"
    generate(["--out", str(data), "--split", "train", "--num", "12", "--seed", "5"])
    return data


def alfworld_factory(**limits: Any):
    """The twelve generated games (alfworld_games) as an EnvPool factory."""
    from agentrl.envs.pool import env_factory

    return env_factory("agentrl/ALFWorld-v0", data_path=str(alfworld_games()), split="train", **limits)


def bench_rollout(model, tok, quick: bool) -> dict[str, Any]:
    from agentrl import envs
    from agentrl.envs.pool import EnvPool
    from agentrl.policies.hf import HFPolicy
    from agentrl.rollout import RolloutConfig, RolloutManager, Task

    factory = alfworld_factory()
    out: dict[str, Any] = {}
    for workers in (1, 2):  # env throughput alone: random admissible actions
        with EnvPool(factory, num_workers=workers) as pool:
            slots = list(range(8))
            results = pool.reset([(s, s, {"instance": s}) for s in slots])
            started, steps = time.perf_counter(), 0
            for _ in range(10):
                results = pool.step(
                    [(s, random.Random(s).choice(r.info["admissible_actions"])) for s, r in zip(slots, results)]
                )
                steps += len(slots)
            out[f"env_steps_per_s_{workers}_workers"] = steps / (time.perf_counter() - started)
    cfg = RolloutConfig(
        group_size=4,
        max_turns=3 if quick else 4,
        num_workers=2,
        max_prompt_tokens=1536,
        max_new_tokens=16 if quick else 48,
        stop=["</action>"],
    )
    with EnvPool(factory, num_workers=2) as pool:
        fmt = envs.make_prompt_format("agentrl/ALFWorld-v0")
        manager = RolloutManager(pool, HFPolicy(model, tok), tok, fmt, cfg, seed=0)
        started = time.perf_counter()
        manager.run([Task(i, i, f"g{i}") for i in range(2)])
        wall = time.perf_counter() - started
    t = manager.timings
    out.update(
        episodes=8,
        wall_s=wall,
        generation_s=t.generation_s,
        env_reset_s=t.env_s,
        env_wait_s=t.env_wait_s,
        env_busy_s=t.env_busy_s,
        prompt_s=t.prompt_s,
        generated_tokens=t.generated_tokens,
        other_s=wall - t.generation_s - t.env_s - t.env_wait_s - t.prompt_s,
        env_hidden_frac=t.as_dict()["rollout/env_hidden_frac"],
    )
    return out


def bench_hub(quick: bool) -> dict[str, Any]:
    """Episodes per second of one 2-turn cue task played natively and through the verifiers and OpenEnv adapters
    (env time and the rollout's bookkeeping only: a scripted policy answers, so no model runs)."""
    from agentrl import envs
    from agentrl.envs.pool import EnvPool, env_factory
    from agentrl.policies.models import build_tiny_tokenizer
    from agentrl.policies.scripted import ScriptedPolicy
    from agentrl.rollout import RolloutConfig, RolloutManager, Task

    tok = build_tiny_tokenizer()
    cases = {
        "native": ("agentrl/CueBandit-v0", {"turns": 2}),
        "verifiers": ("verifiers:tests.vf_cue", {"kind": "multi", "turns": 2}),
        "openenv": ("openenv:tests.openenv_cue:TwoCues", {}),
    }
    tasks, group = (4, 4) if quick else (16, 8)
    out: dict[str, Any] = {"episodes": tasks * group}
    for name, (env_id, kwargs) in cases.items():
        for workers in (0, 2):
            cfg = RolloutConfig(group_size=group, max_turns=2, num_workers=workers, max_new_tokens=4)
            with EnvPool(env_factory(env_id, max_episode_steps=2, **kwargs), num_workers=workers) as pool:
                fmt = envs.make_prompt_format(env_id)
                manager = RolloutManager(pool, ScriptedPolicy(tok, lambda _p: "up"), tok, fmt, cfg, seed=0)
                manager.run([Task(i, i, f"g{i}") for i in range(tasks)])  # envs built, modules imported
                started = time.perf_counter()
                for rep in range(3):
                    manager.run([Task(i, i, f"g{i}") for i in range(tasks)], seed=rep)
                out[f"{name}_episodes_per_s_{workers}_workers"] = 3 * tasks * group / (time.perf_counter() - started)
    for workers in (0, 2):
        native = out[f"native_episodes_per_s_{workers}_workers"]
        for name in ("verifiers", "openenv"):
            out[f"{name}_over_native_{workers}_workers"] = out[f"{name}_episodes_per_s_{workers}_workers"] / native
    return out


def bench_constrained(model, tok, quick: bool) -> dict[str, Any]:
    """Constrained greedy decoding of ALFWorld first-turn prompts (the quickstart's terse format, every admissible
    action a candidate): token by token through `generate` vs skipping the forced tokens (one forward per branch
    point). The replies must be identical; the ratio is the speed-up."""
    from agentrl.chat import ChatTokens
    from agentrl.envs.prompting import TersePromptFormat
    from agentrl.policies.base import SamplingParams
    from agentrl.policies.hf import HFPolicy

    env = alfworld_factory()()
    fmt, chat = TersePromptFormat(), ChatTokens(tok)
    prompts, constraints = [], []
    for i in range(8 if quick else 24):
        obs, info = env.reset(options={"instance": i % 12})
        admissible = info["admissible_actions"]
        prompts.append(chat.prompt_ids(fmt.render(info["task"], [], obs, admissible, window=0)))
        constraints.append([chat.encode_plain(fmt.constrained_reply(a)) + [chat.eos_id] for a in admissible])
    env.close()
    policy = HFPolicy(model, tok, batch_size=len(prompts))
    sampling = SamplingParams(temperature=0.0, max_new_tokens=48, stop=["</action>"])
    out: dict[str, Any] = {"prompts": len(prompts), "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts)}
    replies = {}
    for name, skip in (("token_by_token", False), ("skip_forced", True)):
        policy.skip_forced = skip
        policy.generate(prompts[:2], sampling, constraints[:2])  # warm-up
        started = time.perf_counter()
        replies[name] = [c.token_ids for c in policy.generate(prompts, sampling, constraints)]
        out[f"{name}_s"] = time.perf_counter() - started
    out["reply_tokens_mean"] = sum(map(len, replies["skip_forced"])) / len(prompts)
    out["identical_replies"] = replies["skip_forced"] == replies["token_by_token"]
    out["speedup"] = out["token_by_token_s"] / out["skip_forced_s"]
    return out


def bench_vllm(model, tok, quick: bool) -> dict[str, Any]:
    """The quickstart's rollout sizes (free-text replies in the agent protocol's prompt, ALFWorld games, one iteration's tasks)
    with the transformers backend and with the vLLM backend, alternately in this process on the same model; then
    the vLLM weight sync (stream + prefix-cache reset) and the canary. Needs .venv-vllm (make setup-vllm) with the
    alfworld extra."""
    from agentrl import envs
    from agentrl.config import load_config
    from agentrl.envs.pool import EnvPool
    from agentrl.policies.hf import HFPolicy
    from agentrl.policies.vllm import VLLMPolicy, VllmSpec
    from agentrl.rollout import RolloutManager, Task

    cfg = load_config(["experiment=quickstart"])
    # free-text replies at temperature 1 in the agent protocol's prompt (constrained decoding is transformers-only)
    rollout = replace(cfg.rollout, constrained_actions=False)  # manager.run without temperatures samples at 1
    fmt = envs.make_prompt_format(cfg.env.id, None, reasoning=False, lenient=True)
    factory = alfworld_factory(max_episode_steps=rollout.max_turns)
    started = time.perf_counter()
    engine = VLLMPolicy(
        model, tok, VllmSpec(kv_cache_gb=2), max_model_len=rollout.max_prompt_tokens + rollout.max_new_tokens
    )
    out: dict[str, Any] = {"engine_start_s": time.perf_counter() - started, "engine_dtype": engine.dtype}
    policies = {"hf": HFPolicy(model, tok, batch_size=rollout.generation_batch_size), "vllm": engine}
    tasks = [Task(i, i, f"g{i}") for i in range(rollout.tasks_per_iteration)]
    with EnvPool(factory, num_workers=rollout.num_workers) as pool:
        for _ in range(1 if quick else 2):
            for name, policy in policies.items():
                manager = RolloutManager(pool, policy, tok, fmt, rollout, seed=0, logprobs=name == "vllm")
                started = time.perf_counter()
                episodes = manager.run(tasks)
                wall = time.perf_counter() - started
                if wall < out.get(f"{name}_rollout_s", float("inf")):
                    out[f"{name}_rollout_s"] = wall
                    out[f"{name}_generation_s"] = manager.timings.generation_s
                    out[f"{name}_generated_tokens"] = manager.timings.generated_tokens
                    out[f"{name}_turns"] = sum(len(e.turns) for e in episodes)
    out["rollout_speedup_vllm_vs_hf"] = out["hf_rollout_s"] / out["vllm_rollout_s"]
    out["generation_tok_per_s_hf"] = out["hf_generated_tokens"] / out["hf_generation_s"]
    out["generation_tok_per_s_vllm"] = out["vllm_generated_tokens"] / out["vllm_generation_s"]
    syncs = []
    for _ in range(3):
        engine.sync_weights()
        syncs.append((engine.timings["sync_s"], engine.timings["canary_s"], engine.last_canary))
    out["sync_s"] = min(s for s, _, _ in syncs)  # stream the weights + reset the prefix cache
    out["canary_s"] = min(c for _, c, _ in syncs)  # engine prompt log-probs + learner forward on the probe
    out["canary_gap"] = max(g for _, _, g in syncs)
    out["workload"] = (
        f"{rollout.tasks_per_iteration} tasks x {rollout.group_size}, up to {rollout.max_turns} turns, "
        f"{rollout.max_new_tokens}-token replies, temperature 1"
    )
    engine.close()
    return out


PEER_PROMPTS, PEER_GROUP, PEER_LENGTH, PEER_STEPS = 2, 4, 32, 4


def gsm8k_rows(n: int) -> list[dict[str, Any]]:
    """The prompts our Math env renders (same messages in both trainers) and the reference answers."""
    from agentrl.envs.prompting import AnswerPromptFormat

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
    rows = [json.loads(x) for x in data.read_text().splitlines()[:n]]
    fmt = AnswerPromptFormat()
    return [{"prompt": fmt.render("", [], r["question"], None), "answer": r["final"]} for r in rows]


def math_reward(completions: list, answer: list[str], **_: Any) -> list[float]:
    """The Math env's grading (last boxed answer, fallbacks, math-verify) for TRL's reward hook."""
    from agentrl.envs.math_env import extract_answer, verify_answer

    rewards = []
    for completion, reference in zip(completions, answer):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        extracted, _ = extract_answer(text)
        rewards.append(float(extracted is not None and verify_answer(reference, extracted, 5)[0]))
    return rewards


def bench_peer(quick: bool) -> dict[str, Any]:
    """Seconds per iteration (median after one warm-up) for TRL GRPOTrainer and for agentrl, same process."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise SystemExit("the peer section needs TRL in the benchmark environment: pip install trl")
    steps = PEER_STEPS
    ours = _ours_iterations(quick, steps)
    theirs = _trl_iterations(quick, steps)
    out = {"workload": f"{PEER_PROMPTS} GSM8K prompts x group {PEER_GROUP}, {PEER_LENGTH} new tokens forced, fp32, CPU"}
    for name, times in (("agentrl", ours), ("trl", theirs)):
        for phase, values in times.items():
            out[f"{name}_{phase}_s"] = statistics.median(values[1:])
    out["trl_over_agentrl_iteration"] = out["trl_iteration_s"] / out["agentrl_iteration_s"]
    return out


def _ours_iterations(quick: bool, steps: int) -> dict[str, list[float]]:
    from agentrl import envs
    from agentrl.envs.pool import EnvPool, env_factory
    from agentrl.learner import LearnerConfig
    from agentrl.policies.base import SamplingParams
    from agentrl.policies.hf import HFPolicy
    from agentrl.rollout import RolloutConfig, RolloutManager, Task
    from agentrl.samples import build_samples

    model, tok = load(quick)
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
    sampling = SamplingParams(temperature=1.0, max_new_tokens=PEER_LENGTH, min_new_tokens=PEER_LENGTH, seed=0)
    cfg = RolloutConfig(
        group_size=PEER_GROUP, max_turns=1, num_workers=0, invalid_penalty=0.0, length_limited_is_invalid=False
    )
    learner = Learner(model, LearnerConfig(lr=1e-6, mini_batches=1), AlgoConfig(loss="grpo"))
    times: dict[str, list[float]] = {"iteration": [], "generation": [], "update": []}
    with EnvPool(env_factory("agentrl/Math-v0", data_path=str(data)), num_workers=0) as pool:
        manager = RolloutManager(pool, HFPolicy(model, tok), tok, envs.make_prompt_format("agentrl/Math-v0"), cfg)
        for it in range(steps):  # fixed-length replies (min_new_tokens) so both frameworks do identical work
            started = time.perf_counter()
            tasks = [Task(it * PEER_PROMPTS + k, 0, f"{it}-{k}") for k in range(PEER_PROMPTS)]
            samples = build_samples(manager.run(tasks, seed=it, sampling=sampling))
            middle = time.perf_counter()
            learner.update(samples, p=1.0)
            done = time.perf_counter()
            times["iteration"].append(done - started)
            times["generation"].append(middle - started)
            times["update"].append(done - middle)
    return times


def _trl_iterations(quick: bool, steps: int) -> dict[str, list[float]]:
    import tempfile

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load(quick)
    dataset = Dataset.from_list(gsm8k_rows(PEER_PROMPTS * steps))
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=PEER_PROMPTS * PEER_GROUP,
        num_generations=PEER_GROUP,
        max_completion_length=PEER_LENGTH,
        generation_kwargs={"min_new_tokens": PEER_LENGTH},
        max_steps=steps,
        learning_rate=1e-6,
        beta=0.0,
        num_iterations=1,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        temperature=1.0,
        shuffle_dataset=False,
        seed=0,
    )
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=math_reward, args=args, train_dataset=dataset)
    times: dict[str, list[float]] = {"iteration": [], "generation": [], "update": []}
    generate = trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        started = time.perf_counter()
        result = generate(*a, **k)
        times["generation"].append(time.perf_counter() - started)
        return result

    trainer._generate_and_score_completions = timed_generate

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            times["iteration"].append(time.perf_counter() - self.started)

    trainer.add_callback(StepTimer())
    trainer.train()
    times["update"] = [i - g for i, g in zip(times["iteration"], times["generation"])]
    return times


def forward_flops(model: torch.nn.Module, samples: list[Sample], rows: list[int]) -> float:
    """Model FLOPs of one forward over `rows`: body matmuls, the LM head on action positions, causal attention."""
    cfg = model.config
    body = sum(p.numel() for p in decoder_body(model).layers.parameters() if p.dim() == 2)
    head = cfg.vocab_size * cfg.hidden_size
    flops = 0.0
    for i in rows:
        n = len(samples[i].input_ids)
        flops += 2 * body * n + 2 * head * samples[i].num_action_tokens
        flops += 2 * cfg.num_hidden_layers * n * n * cfg.hidden_size  # QKᵀ and AV, causal half of each
    return flops


def update_flops(learner: Learner, samples: list[Sample]) -> float:
    """Model FLOPs of `learner.update(samples)` with π_old recomputed: forward + backward (3 forwards) over every
    row, and the no-grad π_old forward over the rows of the steps after the first: the steps the next update will
    plan (the shuffle generator is put back as it was)."""
    state = learner.shuffle.get_state()
    steps = learner.plan(len(samples))
    learner.shuffle.set_state(state)
    later = sorted({i for step in steps[1:] for i in step})
    return 3 * forward_flops(learner.model, samples, list(range(len(samples)))) + forward_flops(
        learner.model, samples, later
    )


def gpu_bench(device: str = "cuda", shapes: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """Random-init Qwen2.5-0.5B / 1.5B shapes in bf16 (built from a config: nothing is downloaded): learner
    tokens/s and MFU against the card's measured bf16 matmul rate, generation tokens/s with transformers.
    `device="cpu"` with small `shapes` is a smoke run of this code on a machine without a GPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shapes = shapes or {
        "qwen2.5-0.5b": dict(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
        ),
        "qwen2.5-1.5b": dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
        ),
    }
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine()
    out: dict[str, Any] = {"device": name, **matmul_peak_bf16(device, 8192 if cuda else 512)}
    for label, shape in shapes.items():
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, tie_word_embeddings=True, **shape)).to(device)
        # fp32 master weights, bf16 compute (the paper configs' precision)
        samples = alfworld_batch(151936, 64 if cuda else 4, quick=not cuda)
        learner = Learner(model, LearnerConfig(lr=1e-7, micro_batch_tokens=16384), precision="bf16")
        learner.update(samples, p=1.0)  # warm-up
        flops = update_flops(learner, samples)
        sync()
        started = time.perf_counter()
        learner.update(samples, p=1.0)
        sync()
        seconds = time.perf_counter() - started
        tokens = sum(len(s.input_ids) for s in samples)
        params = sum(p.numel() for p in model.parameters())
        length = min(256, *(len(s.input_ids) for s in samples))  # equal-length prompts: no padding
        prompts = [s.input_ids[:length] for s in samples]
        new_tokens = 128 if cuda else 4
        started = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            model.generate(
                torch.tensor(prompts, device=device),
                attention_mask=torch.ones(len(prompts), len(prompts[0]), dtype=torch.long, device=device),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                pad_token_id=0,
            )
        sync()
        gen_s = time.perf_counter() - started
        out[label] = {
            "params": params,
            "learner_tokens_per_s": tokens / seconds,
            "update_s": seconds,
            "update_tokens": tokens,
            "mfu_vs_bf16_peak": flops / seconds / (out["matmul_bf16_gflops"] * 1e9),
            "generation_tokens_per_s": len(prompts) * new_tokens / gen_s,
            "generation_batch": len(prompts),
            "note": "MFU counts the update's model FLOPs (update_flops: the LM head on action tokens only, causal "
            "attention, π_old over the second step's rows); generation: transformers generate, bf16 autocast, "
            "256-token prompts, 128 new tokens",
        }
        if cuda:
            out[label]["max_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if cuda and importlib.util.find_spec("vllm") is not None:  # the vLLM row, where this machine has vLLM
            try:
                out[label].update(vllm_generation(model, prompts))
            except Exception as err:  # a measured outcome too: recorded in the report, not hidden
                out[label]["vllm_error"] = f"{type(err).__name__}: {err}"
        print(label, json.dumps(out[label]), flush=True)
        del model, learner
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return out


def vllm_generation(model, prompts: list[list[int]]) -> dict[str, float]:
    """vLLM (bf16 engine, colocated) on the same prompts: generation tokens/s, weight sync and canary seconds."""
    from transformers import PreTrainedTokenizerFast

    from agentrl.policies.base import SamplingParams
    from agentrl.policies.models import build_tiny_tokenizer
    from agentrl.policies.vllm import VLLMPolicy, VllmSpec

    tokenizer: PreTrainedTokenizerFast = build_tiny_tokenizer()  # ids only: the engine needs a tokenizer folder
    engine = VLLMPolicy(model, tokenizer, VllmSpec(canary_tolerance=1.0), max_model_len=1024, precision="bf16")
    sampling = SamplingParams(temperature=1.0, max_new_tokens=128, min_new_tokens=128, seed=0, logprobs=True)
    engine.generate(prompts[:4], sampling)
    started = time.perf_counter()
    engine.generate(prompts, sampling)
    gen_s = time.perf_counter() - started
    engine.sync_weights()
    result = {
        "vllm_generation_tokens_per_s": len(prompts) * 128 / gen_s,
        "vllm_sync_s": engine.timings["sync_s"],
        "vllm_canary_s": engine.timings["canary_s"],
    }
    engine.close()
    return result


def matmul_peak_bf16(device: str, n: int) -> dict[str, float]:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    (a @ a).sum().item()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(10):
        a @ a
    sync()
    return {"matmul_bf16_gflops": 10 * 2 * n**3 / (time.perf_counter() - started) / 1e9}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model and small sizes (seconds)")
    ap.add_argument("--gpu", action="store_true", help="the GPU section only (needs CUDA)")
    ap.add_argument(
        "--sections", nargs="+", default=["peak", "learner", "loss", "padding", "rollout", "constrained", "lora"]
    )
    ap.add_argument("--out", default="benchmark.json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, {platform.system()}",
        "torch": torch.__version__,
        "quick": args.quick,
    }
    if args.gpu:
        report["gpu"] = gpu_bench()
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return report
    model, tok = load(args.quick)
    samples = alfworld_batch(len(tok), 16 if args.quick else 8, args.quick)
    out = Path(args.out)

    def save() -> None:  # after every section, so a long run keeps what it measured
        out.write_text(json.dumps(report, indent=1))

    if "peak" in args.sections or "learner" in args.sections:
        report["peak"] = matmul_peak(512 if args.quick else 2048)
    if "learner" in args.sections:
        report["learner"] = bench_learner(model, samples, report["peak"]["matmul_fp32_gflops"])
        save()
    if "loss" in args.sections:
        report["loss"] = bench_losses(*((16, 128) if args.quick else (64, 1024)))
        if "learner" in report:
            step_ms = 1000 * report["learner"]["update_s"]
            for name in ("holder_seq", "holder_token"):  # the loss runs once per optimizer step (2 per update)
                report["loss"][f"{name}_extra_share_of_step"] = report["loss"][f"{name}_minus_grpo_ms"] * 2 / step_ms
    if "padding" in args.sections:
        report["padding"] = {**padding_fraction(samples, 4096), **logprob_memory(args.quick)}
        save()
    sections = {  # the sections that each stand alone, in report order
        "rollout": lambda: bench_rollout(model, tok, args.quick),
        "constrained": lambda: bench_constrained(model, tok, args.quick),
        "hub": lambda: bench_hub(args.quick),
        "peer": lambda: bench_peer(args.quick),
        "lora": lambda: bench_lora(args.quick),
        "vllm": lambda: bench_vllm(model, tok, args.quick),
        "dist": lambda: bench_dist(args.quick),
    }
    for name, run in sections.items():
        if name in args.sections:
            report[name] = run()
            save()
    save()
    for section, values in report.items():
        if isinstance(values, dict):
            print(f"[{section}]")
            for k, v in values.items():
                print(f"  {k:40s} {v:.4g}" if isinstance(v, float) else f"  {k:40s} {v}")
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
