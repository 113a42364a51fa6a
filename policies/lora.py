"""LoRA through PEFT: low-rank adapters on the attention and MLP projections, trained while the base stays frozen.

    agentrl-train experiment=quickstart model.lora.rank=16                 # adapters on every projection
    agentrl-train ... model.lora.rank=8 model.lora.target_modules=[q_proj,v_proj]

PEFT injects its LoRA layers into the model object in place; agentrl keeps using that one object everywhere (the
learner, the transformers generation backend, checkpoints), so generation sees the current adapter after every
update with nothing to sync. The KL reference is the same object with its adapters switched off
(`adapter_disabled`): no second copy of the weights. Checkpoints hold the adapter only (`adapter.safetensors` +
`lora.json`, which names the base model); `agentrl.policies.merge` writes plain HF weights with the adapter folded in.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.types import option

ADAPTER_FILE = "adapter.safetensors"
SPEC_FILE = "lora.json"
# the projections of Qwen2 / Llama / SmolLM2 decoder layers (attention and MLP)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSpec:
    """`model.lora`: rank 0 is full fine-tuning; rank > 0 trains only adapters of that rank."""

    rank: int = option(0, "0: full fine-tuning; > 0: train adapters of this rank only")
    alpha: float = option(32.0, "the adapter's output is scaled by alpha / rank")
    dropout: float = option(0.0, "adapter dropout (> 0 makes the learner's log-probs noisy)")
    target_modules: list[str] = option(help="Linear layers that get adapters", factory=lambda: list(DEFAULT_TARGETS))
    # PEFT's layers_to_transform. Only top layers: backward stops below the lowest adapted layer (cheaper on CPUs)
    layers: list[int] = option(help="decoder layers that get adapters (negative: from the top); []: all", factory=list)

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def check_lora_spec(spec: LoraSpec, linear_names: list[str] | None) -> list[str]:
    """Problems with model.lora; `linear_names` (the model's Linear module names, from a weightless meta copy)
    lets a target that matches nothing be named before any weights load."""
    if not spec.enabled:
        return [] if spec.rank == 0 else [f"model.lora.rank must be >= 0 (0: full fine-tuning), got {spec.rank}"]
    problems = []
    if importlib.util.find_spec("peft") is None:
        problems.append("model.lora.rank > 0 needs PEFT: pip install -e '.[lora]' (in a checkout) or pip install peft")
    if not (spec.alpha > 0 and spec.alpha < float("inf")):
        problems.append(f"model.lora.alpha must be a finite number > 0, got {spec.alpha}")
    if not 0.0 <= spec.dropout < 1.0:
        problems.append(f"model.lora.dropout must be in [0, 1), got {spec.dropout}")
    if not spec.target_modules:
        problems.append("model.lora.target_modules is empty; e.g. model.lora.target_modules=[q_proj,v_proj]")
    if linear_names is not None and spec.layers:
        count = len({n.split(".layers.")[1].split(".")[0] for n in linear_names if ".layers." in n})
        outside = [i for i in spec.layers if not -count <= i < count]
        if outside:
            problems.append(
                f"model.lora.layers {outside} are outside this model's {count} decoder layers (-{count}..{count - 1})"
            )
    if linear_names is not None:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        missing = [t for t in spec.target_modules if t not in leaves]
        if missing:
            problems.append(
                f"model.lora.target_modules {missing} match no Linear layer of this model; its Linear layers: "
                + ", ".join(leaves)
            )
    return problems


def apply_lora(model: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """Inject LoRA layers into `model` in place (base weights frozen, adapters fp32 and trainable); returns it."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=decoder_layers(model, spec.layers) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config).get_base_model()  # the same object, now holding the adapters


def decoder_layers(model: torch.nn.Module, layers: list[int]) -> list[int]:
    """`model.lora.layers` as sorted non-negative indices (negative ones count from the top)."""
    count = model.config.num_hidden_layers
    return sorted({i % count for i in layers})


def _tuner_layers(model: torch.nn.Module) -> list[Any]:
    if importlib.util.find_spec("peft") is None:  # without PEFT no model can hold adapters
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(model: torch.nn.Module) -> bool:
    return bool(_tuner_layers(model))


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors by parameter name (what a LoRA checkpoint stores)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if ".lora_" in name}


@contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The base model: every adapter switched off inside the block (the KL reference), restored after."""
    layers = _tuner_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for name, p in model.named_parameters():  # enable_adapters(True) marks adapters trainable again; be sure
            if ".lora_" not in name:
                p.requires_grad_(False)


def save_adapter(model: torch.nn.Module, folder: Path, base: dict[str, Any], spec: LoraSpec, tokenizer=None) -> None:
    """adapter.safetensors + lora.json (the base model spec and the LoRA settings) + the tokenizer."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(folder / ADAPTER_FILE))
    (folder / SPEC_FILE).write_text(json.dumps({"base": base, "lora": asdict(spec)}, indent=1, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def read_adapter_folder(folder: Path) -> dict[str, Any] | None:
    """The lora.json of an adapter folder, or None when `folder` is not one."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "base" not in data or "lora" not in data:
        raise ValueError(f"{path} needs 'base' and 'lora' entries")
    return data


def load_adapter(model: torch.nn.Module, folder: Path) -> None:
    """Copy adapter.safetensors into `model`'s adapters; names and shapes must match exactly."""
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / ADAPTER_FILE))
    params = dict(model.named_parameters())
    missing = sorted(set(adapter_state(model)) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{folder}: adapter does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"{folder}: {name} has shape {tuple(tensor.shape)}, the model {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)


@torch.no_grad()
def merged_state(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the model as plain Hugging Face weights, one tensor at a time: a LoRA model's adapters are
    folded into their base weights out of place (base + scale·B·A per active adapter), so its own tensors are left
    bit-identical; a model without adapters yields its state dict as it is."""
    tuner_ids = {id(m) for m in _tuner_layers(model)}
    tuners = {name: m for name, m in model.named_modules() if id(m) in tuner_ids}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        owner, found, leaf = name.partition(".base_layer.")
        if not found:
            yield name, tensor.detach()
            continue
        layer = tuners.get(owner)
        if layer is not None and leaf == "weight":
            tensor = tensor + sum(layer.get_delta_weight(a) for a in layer.active_adapters)
        yield f"{owner}.{leaf}", tensor.detach()


def merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its base layer and remove the LoRA layers (in place): plain HF weights."""
    tuners = {id(m) for m in _tuner_layers(model)}
    for name, module in list(model.named_modules()):
        if id(module) in tuners:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
