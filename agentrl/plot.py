"""`agentrl-plot`: overlay the curves of one or more runs (one colour per run name, a legend, integer iterations).

    agentrl-plot runs/cuebandit/latest                          # writes <run>/curves.png
    agentrl-plot runs/a runs/b --out compare.png                # two runs, one colour each
    agentrl-plot runs/holder-s0 runs/holder-s1 runs/grpo-s0 --names holderpo holderpo grpo

Runs that share a name (--names, else the run's `experiment` + `algo.loss` from config.yaml) are seeds of one
method: their mean is drawn with the min–max spread shaded. Panels: success (training rollouts, and each eval set
with markers), invalid-reply rate, reward, p (with the adaptive controller's target p), clip fraction, weight ESS
fraction, log-ratio std (the adaptive controller's inputs), entropy, and the KL panel: k3
estimate of KL(π_θ‖π_ref) to the frozen reference, and PPO's approximate KL to π_old.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from agentrl.metrics import read_metrics

PANELS = [
    ("success", ["rollout/success", "eval/*/success"]),
    ("invalid-reply rate", ["rollout/invalid_rate"]),
    ("reward (mean return)", ["rollout/reward"]),
    ("p (Hölder order) · adaptive controller's target", ["train/p", "p_control/target_p"]),
    ("clip fraction", ["train/clip_frac"]),
    ("weight ESS fraction", ["train/weight_ess_frac"]),
    ("log-ratio std over a reply's tokens", ["train/log_ratio_std"]),
    ("entropy (nats/token)", ["train/entropy"]),
    ("KL: k3 to reference · PPO approx. to π_old", ["train/kl", "train/ppo_kl"]),
]


def expand(pattern: str, rows: list[dict]) -> list[str]:
    """The metric names a panel key matches ("eval/*/success": one per eval set)."""
    if "*" not in pattern:
        return [pattern]
    head, tail = pattern.split("*")
    return sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith(head) and k.endswith(tail) and "/" not in k[len(head) : len(k) - len(tail)]
        }
    )


def run_name(run_dir: Path) -> str:
    """experiment/loss from the run's config.yaml, else the folder name."""
    path = run_dir / "config.yaml"
    if path.exists():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        return f"{cfg.get('experiment', run_dir.name)}/{cfg.get('algo', {}).get('loss', '?')}"
    return run_dir.name


def plot(runs: list[Path], out: Path | None = None, names: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    names = names or [run_name(r) for r in runs]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    groups: dict[str, list[list[dict]]] = defaultdict(list)
    for name, run in zip(names, runs):
        groups[name].append(read_metrics(run))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(3, 3, figsize=(15, 10))
    for ax, (title, patterns) in zip(axes.flat, PANELS):
        for g, (name, seeds) in enumerate(groups.items()):
            every = [r for rows in seeds for r in rows]
            keys = [k for pattern in patterns for k in expand(pattern, every)]
            for k, key in enumerate(keys):
                curves = []
                for rows in seeds:
                    points = {r["iteration"]: r[key] for r in rows if r.get(key) is not None}
                    curves.append(points)
                xs = sorted(set().union(*curves))
                if not xs:
                    continue
                table = np.array([[c.get(x, np.nan) for x in xs] for c in curves], dtype=float)
                mean = np.nanmean(table, axis=0)
                label = name if len(keys) == 1 else f"{name} · {key}"
                style = {"marker": "o"} if key.startswith("eval") else {}
                ax.plot(xs, mean, color=colours[g % len(colours)], ls=["-", "--", ":"][k % 3], label=label, **style)
                if len(seeds) > 1:
                    ax.fill_between(
                        xs,
                        np.nanmin(table, axis=0),
                        np.nanmax(table, axis=0),
                        color=colours[g % len(colours)],
                        alpha=0.2,
                    )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(", ".join(f"{n} ({len(s)} run{'s' * (len(s) > 1)})" for n, s in groups.items()))
    fig.tight_layout()
    out = out or runs[0] / "curves.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="agentrl-plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", type=Path, nargs="+", help="run directories (each with metrics.jsonl)")
    ap.add_argument("--names", nargs="+", help="a legend name per run; equal names are seeds of one method")
    ap.add_argument("--out", type=Path, help="PNG path (default: <first run>/curves.png)")
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "metrics.jsonl").exists()]
    if missing:
        ap.error(f"no metrics.jsonl in {', '.join(missing)}")
    try:
        print(plot(args.runs, args.out, args.names))
    except ValueError as err:
        ap.error(str(err))


if __name__ == "__main__":
    main()
