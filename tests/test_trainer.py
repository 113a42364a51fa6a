"""Trainer: real learning on CueBandit, kill-and-resume equivalence, config validation before weights load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agentrl import report
from agentrl import trainer as trainer_module
from agentrl.config import CONFIG_DIR, load_config, validate_config
from agentrl.errors import ConfigError
from agentrl.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("algo", ["holderpo", "grpo"])
def test_tiny_model_learns_cuebandit_from_scratch(algo, tmp_path, capsys):
    cfg = load_config(
        ["experiment=cuebandit", f"algo={algo}", f"trainer.run_dir={tmp_path}", "trainer.random_baseline_seeds=2"]
    )
    result = trainer_module.train(cfg)
    assert result["before"]["eval/panel/success"] <= 0.3
    assert result["after"]["eval/panel/success"] >= 0.9, result["after"]
    summary = capsys.readouterr().out  # the before/after table with luck's column and the paired difference
    assert "| random (2 seeds) |" in summary and "invalid-reply rate: before" in summary
    assert len(result["random"]["panel"]) == 2 and all(0.0 <= s <= 1.0 for s in result["random"]["panel"])
    before = json.loads((tmp_path / "eval" / "iter-000000.json").read_text())["panel"]
    after = json.loads((tmp_path / "eval" / f"iter-{cfg.trainer.iterations:06d}.json").read_text())["panel"]
    assert all(len(g["actions"]) == g["turns"] > 0 for g in before + after)  # what the agent did, per game
    diff, se, n = report.paired_difference(before, after)
    assert n == cfg.env.eval_instances and diff == pytest.approx(
        result["after"]["eval/panel/success"] - result["before"]["eval/panel/success"]
    )
    assert f"after - before: {100 * diff:+.1f} points ± {100 * se:.1f}" in summary
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == cfg.trainer.iterations
    if algo == "holderpo":  # p annealed 1 → −1 over the run: step 1 of 250 first, exactly p_end last
        assert train_rows[0]["train/p"] == pytest.approx(1.0 - 2.0 / 250) and train_rows[-1]["train/p"] == -1.0


def test_paired_difference_is_over_the_same_games():
    before = [{"instance": i, "won": w} for i, w in enumerate([0, 0, 1, 0])]
    after = [{"instance": i, "won": w} for i, w in reversed(list(enumerate([1, 1, 1, 0])))]  # order does not matter
    diff, se, n = report.paired_difference(before, after)
    assert (diff, n) == (0.5, 4)  # differences 1, 1, 0, 0: sample std 0.577, / √4
    assert se == pytest.approx((1 / 3) ** 0.5 / 2)
    assert report.in_standard_errors(diff, se) == pytest.approx(0.5 / se)
    assert report.in_standard_errors(0.0, 0.0) == 0.0  # every game unchanged
    assert report.in_standard_errors(1.0, 0.0) == float("inf")  # every game flipped to a win


def _train_cmd(run_dir: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agentrl.trainer",
        "experiment=cuebandit",
        f"trainer.run_dir={run_dir}",
        "trainer.iterations=40",
        "trainer.checkpoint_every=5",
        "trainer.eval_every=10",
        *extra,
    ]


VOLATILE = ("time/", "train/tokens_per_s", "rollout/env_hidden_frac")  # wall-clock measurements


def _stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(full, []), check=True, cwd=ROOT, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(
        _train_cmd(killed, []), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill somewhere after the 2nd checkpoint, mid-run
        path = killed / "metrics.jsonl"
        done = [json.loads(x)["iteration"] for x in path.read_text().splitlines()] if path.exists() else []
        if done and max(done) >= 13:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows_at_kill = read_metrics(killed)
    assert max(r["iteration"] for r in rows_at_kill) < 40, "the run finished before it could be killed"
    subprocess.run(
        _train_cmd(killed, ["trainer.resume=auto"]), check=True, cwd=ROOT, env=env, capture_output=True, timeout=600
    )
    a, b = read_metrics(full), read_metrics(killed)
    assert [(r["iteration"], r["kind"]) for r in a] == [
        (r["iteration"], r["kind"]) for r in b
    ]  # no duplicate/missing row
    assert _stable(a) == _stable(b)
    wa = load_file(full / "checkpoints" / "iter-000040" / "model" / "model.safetensors")
    wb = load_file(killed / "checkpoints" / "iter-000040" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_config_fails_before_weights_load(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("weights were loaded before validation")

    monkeypatch.setattr("agentrl.components.load_model", boom)  # the name the trainer calls
    cfg = load_config(
        [
            "env.id=agentrl/CueBandt-v0",
            "algo.loss=holder_sq",
            "trainer.iterations=0",
            "rollout.group_size=1",
            "model.name=/does/not/exist",
            f"trainer.run_dir={tmp_path}",
        ]
    )
    with pytest.raises(ConfigError) as err:
        trainer_module.train(cfg)
    message = str(err.value)
    for expected in (
        "did you mean 'agentrl/CueBandit-v0'",
        "did you mean 'holder_seq'",
        "total_steps must be >= 1",
        "group_size=1",
        "/does/not/exist",
    ):
        assert expected in message, message


def test_unknown_override_key_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer"):
        load_config(["trainer.iteratons=3"])


def test_cli_reports_config_errors_with_exit_code_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "agentrl.trainer", "algo.loss=nope", f"trainer.run_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2 and "unknown algo.loss 'nope'" in out.stderr


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GROUPS = [
    (g.name, p.stem) for g in CONFIG_DIR.iterdir() if g.is_dir() and g.name != "experiment" for p in g.glob("*.yaml")
]


# what needs data, weights or packages the main venv lacks (generated games, the paper's models, vLLM: it lives in
# .venv-vllm, where tests/test_vllm.py runs cuebandit_vllm) is checked structurally only
NEEDS_RESOURCES = {
    "alfworld_paper",
    "math_paper",
    "quickstart",
    "cpu_alfworld",
    "alfworld",
    "textworld",
    "qwen2.5-1.5b-instruct",
    "cuebandit_vllm",
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = load_config([f"experiment={experiment}"])
    assert cfg.experiment == experiment
    validate_config(cfg, resources=experiment not in NEEDS_RESOURCES)


@pytest.mark.parametrize("group, name", GROUPS)
def test_every_group_option_composes_and_validates(group, name):
    validate_config(load_config([f"{group}={name}"]), resources=name not in NEEDS_RESOURCES)


class _Payload:
    """Unpickling this runs code: it creates the file named in `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_payload_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    from agentrl.checkpoint import CorruptCheckpoint, load_checkpoint, save_checkpoint
    from tests.conftest import make_tiny

    model, tok = make_tiny()
    folder = save_checkpoint(tmp_path, 1, model, tok, {"learner": {}}, keep=1)
    marker = tmp_path / "pwned"
    torch.save({"iteration": 1, "rng": _Payload(marker)}, folder / "trainer_state.pt")
    with pytest.raises(CorruptCheckpoint, match="Weights only load failed|Unpickl"):
        load_checkpoint(folder, model)
    assert not marker.exists()
    _Payload(marker).__reduce__()[0](marker)  # the payload is live: unpickling it unsafely would have run it
    assert marker.exists()
