"""scripts/degenerate_replies.py: the repetition heuristic the cpu_math docs count with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.degenerate_replies import degenerate, degenerate_share


def test_repetition_is_flagged_and_ordinary_replies_are_not():
    for reply in (
        "x" * 48,
        "1" + "7" * 47,
        "To find 19 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 +",
        "minus " * 12,
    ):
        assert degenerate(reply), reply
    for reply in (
        "19 - 2 = 17",
        "To find 19 + 2, we add the two numbers together and get 21. The answer is 21.",
        "First, 12 times 3 is 36; then 36 minus 4 is 32, so the result is 32.",
        "",
    ):
        assert not degenerate(reply), reply


def test_share_per_evaluation_reads_every_panel_of_a_run(tmp_path):
    games = [{"actions": ["x" * 48]}, {"actions": ["7 + 1 = 8"]}, {"actions": []}, {"actions": ["x" * 60]}]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "iter-000000.json").write_text(json.dumps({"heldout": games[1:3]}))
    (tmp_path / "eval" / "iter-000005.json").write_text(json.dumps({"heldout": games[:2], "other": games[2:]}))
    assert degenerate_share(tmp_path) == {0: 0.0, 5: 50.0}
