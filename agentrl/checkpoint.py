"""Checkpoints: HF-format weights + trainer state + the resolved config, written atomically (temp folder, then
rename), last K kept, every file covered by a SHA-256 manifest written last.

run_dir/checkpoints/iter-000010/{model/, trainer_state.pt, config.json, checksums.json}
  under torchrun also: sharded/ (Distributed Checkpoint: sharded weights + optimizer), trainer_state.rank<r>.pt
  for ranks r ≥ 1 (each rank's RNGs; rank 0's are in trainer_state.pt), ranks.json (the world size it resumes
  with); model/ is then rank 0's full-weights export

Loading verifies the manifest before anything is read, and reads the trainer state with weights_only=True: a
checkpoint received from someone else can hold tensors and plain values, never code to run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl import distributed
from agentrl.policies.lora import LoraSpec, has_adapters, load_adapter, read_adapter_folder, save_adapter

CKPT_RE = re.compile(r"^iter-(\d{6})$")
MANIFEST = "checksums.json"
SHARDED = "sharded"  # Distributed Checkpoint folder of a run under torchrun
RANKS = "ranks.json"


class CorruptCheckpoint(Exception):
    """A checkpoint whose files are missing, damaged or do not match their checksums."""


def rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain values, so the checkpoint loads with torch.load(weights_only=True)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    model,
    tokenizer,
    trainer_state: dict[str, Any],
    keep: int,
    config: dict[str, Any] | None = None,
    sharded: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `iteration` (iterations completed) atomically and prune older ones beyond the newest
    `keep` (never a checkpoint newer than this one: those belong to another run and are not ours to delete).

    Under torchrun (`sharded`: the state from `sharded_state`), every rank calls this: the sharded model and optimizer
    go to `sharded/` with Distributed Checkpoint, each rank's own state (RNGs) to its `state_file`, and
    rank 0 writes the full weights in `model/` (from `model`, the rank's unsharded copy: an HF export for agentrl-eval
    and sharing), the config, `ranks.json`, then the manifest of every file last, and renames the folder."""
    place = distributed.current()
    root = run_dir / "checkpoints"
    final = root / f"iter-{iteration:06d}"
    # one temporary folder for all ranks (the pid of one process names none of the others')
    tmp = root / f".tmp-iter-{iteration:06d}-{distributed.broadcast(os.getpid())}"
    if place.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    torch.save({**trainer_state, "iteration": iteration, "rng": rng_state()}, tmp / state_file(place.rank))
    if sharded is not None:
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded, checkpoint_id=tmp / SHARDED)
    if place.main:
        if has_adapters(model):  # LoRA: the adapter alone (small), with the base model's spec to rebuild it
            base = dict((config or {}).get("model", {}))
            lora = LoraSpec(**base.pop("lora", {}))
            save_adapter(model, tmp / "model", base, lora, tokenizer)
        else:
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        (tmp / "config.json").write_text(json.dumps(config or {}, indent=1, default=str))
        if sharded is not None:
            (tmp / RANKS).write_text(json.dumps({"world_size": place.world}))
    distributed.barrier()  # every rank's files are written
    if place.main:
        (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1))  # last: its presence means complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        older = [p for p in list_checkpoints(run_dir) if int(CKPT_RE.match(p.name)[1]) <= iteration]
        for old in older[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def state_file(rank: int) -> str:
    """The trainer state's file: rank 0's (or the one process's) is trainer_state.pt, every other rank has its own."""
    return "trainer_state.pt" if rank == 0 else f"trainer_state.rank{rank}.pt"


def sharded_state(model, optimizer) -> dict[str, Any]:
    """The sharded model's and optimizer's state (DTensors, parameter names as keys) for Distributed Checkpoint."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def checkpoint_world_size(path: Path) -> int:
    """The number of ranks that wrote a checkpoint (1 for one process's)."""
    ranks = path / RANKS
    return int(json.loads(ranks.read_text())["world_size"]) if ranks.exists() else 1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are ignored)."""
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if CKPT_RE.match(p.name) and (p / "trainer_state.pt").exists()]
    return sorted(found, key=lambda p: p.name)


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check a checkpoint's files against its manifest (present, a JSON object, covering every file, every
    checksum equal) and return its saved config. Raises CorruptCheckpoint naming what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():  # every checkpoint agentrl writes has one (written last): without it, damage
        raise CorruptCheckpoint(f"{path}: {MANIFEST} is missing (deleted, or the checkpoint was copied in part)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"{manifest_path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not all(isinstance(v, str) for v in manifest.values()):
        raise CorruptCheckpoint(f"{manifest_path} does not map file names to checksums")
    actual = _manifest(path)
    missing = sorted(set(manifest) - set(actual))
    if missing:
        raise CorruptCheckpoint(f"{path}: missing {', '.join(missing)}")
    uncovered = sorted(set(actual) - set(manifest))  # an emptied manifest ({}) once let flipped weights through
    if uncovered:
        raise CorruptCheckpoint(f"{path}: {', '.join(uncovered[:5])} not covered by {MANIFEST} (damaged or modified)")
    changed = sorted(name for name, digest in manifest.items() if actual[name] != digest)
    if changed:
        raise CorruptCheckpoint(f"{path}: checksum mismatch in {', '.join(changed)} (damaged or modified)")
    config_path = path / "config.json"
    if not config_path.exists():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise CorruptCheckpoint(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CorruptCheckpoint(f"{config_path} does not hold a config object")
    return config


def usable_checkpoints(run_dir: Path) -> tuple[list[Path], list[str]]:
    """(checkpoints that verify, newest first; what is wrong with each that does not)."""
    good, damaged = [], []
    for path in list_checkpoints(run_dir)[::-1]:
        try:
            verify_checkpoint(path)
            good.append(path)
        except CorruptCheckpoint as err:
            damaged.append(str(err))
    return good, damaged


def load_checkpoint(path: Path, model, optimizer=None) -> dict[str, Any]:
    """Load weights into `model` (in place) and return the trainer state (RNG states restored). Verify first
    (verify_checkpoint); a file that still fails to load raises CorruptCheckpoint before the model is touched.

    A checkpoint written under torchrun loads on the same number of ranks: the sharded model and `optimizer` from
    Distributed Checkpoint (the returned state's learner part then holds no optimizer), each rank its own RNGs."""
    from transformers import AutoModelForCausalLM

    place = distributed.current()
    saved = checkpoint_world_size(path)
    if saved != place.world:  # (the trainer refuses this before loading weights: checkpoints_to_try)
        raise CorruptCheckpoint(f"{path} was written by {saved} rank(s) and this run has {place.world}")
    try:
        # weights_only: a checkpoint from elsewhere can hold tensors and plain values, never code to run
        state = torch.load(path / state_file(place.rank), weights_only=True)
        if place.enabled:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import set_state_dict

            target = sharded_state(model, optimizer)
            dcp.load(target, checkpoint_id=path / SHARDED)
            set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
        else:
            if read_adapter_folder(path / "model") is not None:
                load_adapter(model, path / "model")
            else:
                loaded = AutoModelForCausalLM.from_pretrained(path / "model", dtype=next(model.parameters()).dtype)
                model.load_state_dict(loaded.state_dict())
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CorruptCheckpoint(f"{path}: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    set_rng_state(state["rng"])
    return state
