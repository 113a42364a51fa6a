"""Share of a run's panel replies that are degenerate repetition, at each evaluation (single-turn runs, e.g. cpu_math).

    python scripts/degenerate_replies.py runs/math/holderpo-3 runs/math/grpo-0 [--json out.json]

A reply counts as degenerate when one whitespace-separated word makes up at least 8 of its 12 or more words
("1 + 1 + 1 + …", "minus minus …"), or when it has 40 or more characters and zlib compresses it to under 35%
("xxxxxxxx…", "1777777…"). A heuristic, stated so that the numbers can be checked: it reads only the replies the
evaluation stored (eval/iter-*.json, the first action of each game).
"""

from __future__ import annotations

import argparse
import collections
import json
import zlib
from pathlib import Path


def degenerate(reply: str) -> bool:
    words = reply.split()
    if len(words) >= 12 and collections.Counter(words).most_common(1)[0][1] >= 8:
        return True
    raw = reply.encode()
    return len(raw) >= 40 and len(zlib.compress(raw, 9)) < 0.35 * len(raw)


def degenerate_share(run: Path) -> dict[int, float]:
    """{iteration: % of the panel's games whose reply is degenerate} for each stored evaluation of `run`."""
    out = {}
    for path in sorted((run / "eval").glob("iter-*.json")):
        games = [game for panel in json.loads(path.read_text()).values() for game in panel]
        flagged = sum(degenerate(game["actions"][0]) for game in games if game["actions"])
        out[int(path.stem.split("-")[1])] = round(100 * flagged / max(len(games), 1), 1)
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[int, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="also write {run: {iteration: %}} here")
    args = ap.parse_args(argv)
    report = {str(run): degenerate_share(run) for run in args.runs}
    for run, shares in report.items():
        print(f"{run:40s}", "  ".join(f"it {it}: {share:g}%" for it, share in shares.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
