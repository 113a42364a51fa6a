"""Metric sinks: JSONL in the run folder always; TensorBoard and W&B when installed and enabled."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL (one row per iteration or evaluation) plus optional TensorBoard / W&B mirrors."""

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = False,
        wandb: bool = False,
        project: str = "agentrl",
        config: dict[str, Any] | None = None,
        resume_after: int = 0,
    ):
        """`resume_after`: iterations already completed (rows past it are dropped; 0 starts the log afresh)."""
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.truncate_after(resume_after if resume_after > 0 else -1)
        self.tb = None
        self.wandb = None
        if tensorboard:
            if importlib.util.find_spec("tensorboard") is None:
                raise RuntimeError("trainer.tensorboard=true needs tensorboard: pip install -e '.[logging]'")
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the steps a resumed run writes again, so none shows twice
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_after + 1 if resume_after else None)
        if wandb:
            if importlib.util.find_spec("wandb") is None:
                raise RuntimeError("trainer.wandb=true needs wandb: pip install -e '.[logging]'")
            import wandb as wb

            self.wandb = wb.init(project=project, dir=str(run_dir), config=config, resume="allow")

    def truncate_after(self, iteration: int) -> None:
        """Drop rows past `iteration` (written after the checkpoint we resume from), so none is duplicated."""
        if not self.path.exists():
            return
        rows = read_metrics(self.path.parent)  # a damaged line (a write cut by a crash) is dropped here
        kept = [r for r in rows if r["iteration"] <= iteration]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
        step = int(row["iteration"])
        numeric = {k: v for k, v in clean.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of run_dir/metrics.jsonl. Lines that are not complete JSON rows (a write cut short by a crash or
    a full disk) are skipped with a warning naming them; the rest of the run's history is kept."""
    path = Path(run_dir) / "metrics.jsonl"
    rows, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(row, dict) and isinstance(row.get("iteration"), int):
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} damaged line(s): {bad[:5]}", stacklevel=2)
    return rows
