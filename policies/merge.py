"""Export a LoRA checkpoint as plain HF weights with the adapter folded in.

    python -m agentrl.policies.merge runs/quickstart/latest/checkpoints/iter-000003/model --out merged/

The adapter folder's `lora.json` names the base model; it is loaded, the adapter applied and merged, and the result
saved with its tokenizer (a folder any transformers or vLLM user can load).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agentrl.policies.lora import SPEC_FILE, LoraSpec, load_adapter, merge_adapters, read_adapter_folder
from agentrl.policies.models import load_model, model_spec_from_dict


def export_merged(adapter_folder: Path, out: Path) -> Path:
    """Load the base named in `adapter_folder`/lora.json, apply the adapter, fold it in, save HF weights to `out`."""
    info = read_adapter_folder(adapter_folder)
    if info is None:
        raise ValueError(f"{adapter_folder} is not an adapter folder (no {SPEC_FILE})")
    spec = model_spec_from_dict(info["base"])
    spec.lora = LoraSpec(**info["lora"])
    model, tokenizer = load_model(spec)
    load_adapter(model, adapter_folder)
    merged = merge_adapters(model)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m agentrl.policies.merge", description="Export a LoRA checkpoint as merged HF weights."
    )
    ap.add_argument("adapter", type=Path, help="a checkpoint's model/ folder holding adapter.safetensors")
    ap.add_argument("--out", type=Path, required=True, help="folder for the merged HF model")
    args = ap.parse_args(argv)
    print(f"merged weights written to {export_merged(args.adapter, args.out)}")


if __name__ == "__main__":
    main()
