"""Rollout/training mismatch (losses/mismatch.py): the weights and metrics, how each loss takes them, the learner's
use of the sampler's log-probs (exact gradient scaling), and the config checks that come with model.backend."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from agentrl.config import load_config, validate_config
from agentrl.errors import ConfigError
from agentrl.learner import Learner, LearnerConfig
from agentrl.losses import POLICY_LOSSES
from agentrl.losses.mismatch import Correction, MismatchConfig, mismatch_weights
from agentrl.policies.models import ModelSpec, load_model
from agentrl.samples import build_samples
from agentrl.types import Episode, Sample, SampledWith, Turn


def test_tis_weights_truncate_and_metrics_measure_the_gap():
    old = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    rollout = torch.tensor([[0.0, -1.0 - math.log(4.0), -2.0 + math.log(2.0), 5.0]])
    mask = torch.tensor([[0, 1, 1, 0]])  # position 3 has no sampler log-prob: weight 1, not measured
    weights, metrics = mismatch_weights(old, rollout, mask, "tis", cap=2.0)
    assert weights[0].tolist() == pytest.approx([1.0, 2.0, 0.5, 1.0])  # r = 4 truncated to C = 2; r = 0.5 kept
    assert float(metrics["mismatch/is_clip_frac"]) == pytest.approx(0.5)
    assert float(metrics["mismatch/max_abs"]) == pytest.approx(math.log(4.0))
    k3 = [(r - 1 - math.log(r)) for r in (4.0, 0.5)]
    assert float(metrics["mismatch/kl"]) == pytest.approx(sum(k3) / 2)
    same, equal = mismatch_weights(old, old, mask, "tis", cap=2.0)
    assert torch.equal(same, torch.ones_like(same)) and float(equal["mismatch/kl"]) == 0.0


def test_seq_mask_drops_sequences_whose_geometric_ratio_leaves_the_band():
    old = torch.zeros(3, 3)
    rollout = torch.tensor([[0.5, -0.5, 0.0], [-1.0, -1.0, 0.0], [0.3, 0.3, 0.0]])  # geo ratios: 1, e, e^-0.3
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0]])
    weights, metrics = mismatch_weights(old, rollout, mask, "seq_mask", cap=2.0)
    assert weights[:, 0].tolist() == [1.0, 0.0, 1.0]  # e > 2: dropped, even though one token alone would pass
    assert float(metrics["mismatch/is_clip_frac"]) == pytest.approx(1 / 3)
    off, _ = mismatch_weights(old, rollout, mask, "off", cap=2.0)
    assert off is None


@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES))
def test_every_loss_takes_the_weights_unit_weights_change_nothing(loss):
    torch.manual_seed(0)
    lp = torch.randn(4, 6, requires_grad=True)
    old = lp.detach() + 0.05 * torch.randn(4, 6)
    adv, mask = torch.randn(4), (torch.rand(4, 6) > 0.3).long()
    fn = POLICY_LOSSES[loss]
    base, _ = fn(lp, old, adv, mask)
    ones, _ = fn(lp, old, adv, mask, is_weight=torch.ones(4, 6))
    half, _ = fn(lp, old, adv, mask, is_weight=torch.full((4, 6), 0.5))
    assert torch.allclose(base, ones) and torch.allclose(half, 0.5 * base)
    dropped = torch.ones(4, 6)
    dropped[1] = 0.0  # one sequence masked out: the loss is the others' terms only
    partial, _ = fn(lp, old, adv, mask, is_weight=dropped)
    kept = torch.tensor([1.0, 0.0, 1.0, 1.0])
    alone, _ = fn(lp, old, adv * kept, mask)
    assert torch.allclose(partial, alone, atol=1e-6)


def _samples() -> list[Sample]:
    """Two groups of four window samples (prompt, then four generated tokens)."""
    out = []
    for g in range(2):
        for k in range(4):
            ids = [1, 5 + k, 9, 12 + g, 7 + k, 30 + g, 2]
            out.append(Sample(ids, [0, 0, 0, 1, 1, 1, 1], reward=float(k % 2), group_id=str(g), episode_id=4 * g + k))
    return out


def _grads(correction: str, shift: float) -> tuple[torch.Tensor, dict[str, float]]:
    model, _ = load_model(ModelSpec(name="tiny-qwen2"))
    cfg = LearnerConfig(lr=1e-3, mini_batches=1, mismatch=MismatchConfig(correction=Correction(correction), cap=8.0))
    learner = Learner(model, cfg, seed=0)
    samples = _samples()
    for s, lp in zip(samples, learner.log_probs(model, samples)):
        s.rollout_logprobs = [float(x) + shift for x, m in zip(lp, s.action_mask) if m]
        s.advantage = s.reward - 0.5
    _, metrics, _ = learner.accumulate_gradients(samples, list(range(len(samples))), None, None, p=1.0)
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return grad, metrics


@pytest.mark.parametrize("loss_scale", [0.25, 4.0])
def test_learner_scales_the_gradient_by_the_truncated_ratio(loss_scale):
    """Sampler log-probs log(s) below π_old give r = π_old/π_rollout = s on every token (under C = 8), so the tis
    gradient is exactly s times the uncorrected one; the metrics see the gap."""
    plain, metrics = _grads("off", 0.0)
    assert metrics["mismatch/kl"] < 1e-9 and metrics["mismatch/max_abs"] < 1e-5  # same model, same numbers
    corrected, metrics = _grads("tis", -math.log(loss_scale))
    assert torch.allclose(corrected, loss_scale * plain, rtol=1e-4, atol=1e-9)
    assert metrics["mismatch/max_abs"] == pytest.approx(abs(math.log(loss_scale)), rel=1e-4)


def test_seq_mask_with_a_large_gap_drops_every_sequence():
    grad, metrics = _grads("seq_mask", math.log(100.0))
    assert metrics["mismatch/is_clip_frac"] == 1.0 and float(grad.abs().max()) == 0.0


def test_window_and_full_samples_carry_the_sampler_log_probs():
    turns = [
        Turn(
            prompt_ids=[1, 2],
            completion_ids=[3, 4],
            completion_text="",
            action="a",
            valid=True,
            observation="",
            sampled=SampledWith(logprobs=[-0.1, -0.2]),
        ),
        Turn(
            prompt_ids=[1, 2, 3, 4, 5],
            completion_ids=[6],
            completion_text="",
            action="b",
            valid=True,
            observation="",
            sampled=SampledWith(logprobs=[-0.3]),
        ),
    ]
    episode = Episode(episode_id=0, group_id="g", task="", task_type="", instance="", turns=turns)
    window = build_samples([episode], "window")
    assert [s.rollout_logprobs for s in window] == [[-0.1, -0.2], [-0.3]]
    (full,) = build_samples([episode], "full")
    assert full.rollout_logprobs == [-0.1, -0.2, -0.3]
    turns[1].sampled = SampledWith()  # one turn without: the sample has none (weight 1, not measured)
    assert build_samples([episode], "full")[0].rollout_logprobs is None


def test_backend_config_is_checked_before_weights_load(monkeypatch):
    cfg = load_config(
        [
            "experiment=cuebandit",
            "model.backend=vllm",
            "rollout.constrained_actions=true",
            "learner.mismatch.cap=0.5",
            "exploration.temperature=1",
            "exploration.temperature_end=2",  # annealing to 2 from 1: the members end at 2 and 6
            "rollout.group_size=2",
            "exploration.member_temperatures=[1,3]",
        ]
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    for needle in (
        "constrained_actions=true runs on the transformers backend",
        "model.backend=vllm samples at temperatures up to 2",
        "this config samples at 6",
        "learner.mismatch.cap must be",
        "make setup-vllm",
    ):
        assert needle in text, text
    with pytest.raises(ConfigError, match="model.backend"):
        load_config(["model.backend=sglang"])
    with pytest.raises(ConfigError, match="model.vllm.dtype"):  # a fixed set of values: refused as the config loads
        load_config(["model.vllm.dtype=int4"])
    fine = load_config(["experiment=cuebandit", "model.backend=vllm", "model.hidden_size=128"])
    quickstart = ["experiment=quickstart", "model.backend=vllm", "rollout.constrained_actions=false"]
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="this config samples at 100"):  # its hot members, on a backend that can't
        validate_config(load_config(quickstart), resources=False)
    as_readme = ["exploration.temperature=1", "exploration.member_temperatures=[]", "exploration.temperature_end=null"]
    validate_config(load_config([*quickstart, *as_readme]), resources=False)  # the README's vLLM quickstart command
    validate_config(fine, resources=False)


def test_agentrl_eval_with_vllm_missing_says_how_to_install(monkeypatch, capsys):
    from agentrl import eval_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(SystemExit) as stop:
        eval_cli.main(["--env", "agentrl/CueBandit-v0", "--model", "tiny-qwen2", "--backend", "vllm"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--backend=vllm needs vLLM" in err and "make setup-vllm" in err and "--backend=hf" in err


def test_a_loss_without_is_weight_cannot_run_with_the_correction_on(monkeypatch):
    def bare(log_prob, old_log_prob, advantages, mask, *, p=1.0):
        return (log_prob * mask).sum(), {}

    monkeypatch.setitem(POLICY_LOSSES, "bare", bare)
    cfg = load_config(["experiment=cuebandit", "algo.loss=bare", "learner.mismatch.correction=tis"])
    with pytest.raises(ConfigError, match="takes no is_weight"):
        validate_config(cfg, resources=False)
    validate_config(load_config(["experiment=cuebandit", "algo.loss=bare"]), resources=False)  # auto → off on hf


def test_transformers_backend_with_the_correction_on_keeps_and_compares_the_samplers_log_probs(tmp_path):
    """With the correction switched on, the transformers backend returns its log-probs too; sampler and learner
    are one model, so the gap is numerical noise (batched generation vs the learner's padded forward)."""
    from agentrl import trainer
    from agentrl.metrics import read_metrics

    cfg = load_config(
        [
            "experiment=cuebandit",
            "learner.mismatch.correction=tis",
            "env.eval_instances=8",
            "trainer.iterations=2",
            "trainer.eval_before=false",
            "trainer.progress=false",
            f"trainer.run_dir={tmp_path}",
        ]
    )
    trainer.train(cfg)
    rows = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert len(rows) == 2
    for row in rows:
        assert row["mismatch/max_abs"] < 1e-4 and row["mismatch/is_clip_frac"] == 0.0, row


def test_a_sampler_that_is_not_the_policy_warns_and_past_stop_kl_stops_the_run(tmp_path):
    """Weights changed in a vLLM engine after its sync went unnoticed (rc 0; the canary only runs right after a sync):
    only mismatch/kl rose (0.06 against 0.0). Now it warns above learner.mismatch.warn_kl and stops the run, unsaved,
    above learner.mismatch.stop_kl."""
    import warnings

    from agentrl.config import load_config
    from agentrl.lifecycle import SamplerNotPolicy, check_sampler

    cfg = load_config(["learner.mismatch.stop_kl=0.1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sampler({"mismatch/kl": 0.001}, cfg, 3, tmp_path)  # within bf16 noise: quiet
        check_sampler({}, cfg, 3, tmp_path)  # no sampler log-probs: nothing to check
    with pytest.warns(UserWarning, match="iteration 3: mismatch/kl = 0.06 .*warn_kl=0.02"):
        check_sampler({"mismatch/kl": 0.06}, cfg, 3, tmp_path)
    with pytest.raises(SamplerNotPolicy, match="stop_kl=0.1: stopped, nothing saved"):
        check_sampler({"mismatch/kl": 0.5}, cfg, 3, tmp_path)


def test_engine_folders_of_killed_processes_are_removed_on_the_next_start(tmp_path):
    """SIGKILL skips close(), which removed the engine's temporary folder (config, tokenizer)."""
    import subprocess
    import sys

    from agentrl.policies.vllm import ENGINE_FOLDER_PREFIX, remove_stale_engine_folders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{ENGINE_FOLDER_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{ENGINE_FOLDER_PREFIX}{os.getppid()}-def"  # a running process's (pytest's parent)
    for folder in (stale, live):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    assert remove_stale_engine_folders(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists()
