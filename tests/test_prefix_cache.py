"""learner.frozen_prefix_cache: with only the top decoder layers training, the layers below run once per sample per
update; the update is the one without the cache."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.algo import AlgoConfig
from agentrl.learner import Learner, LearnerConfig
from agentrl.policies.lora import LoraSpec
from agentrl.policies.models import ModelSpec, load_model
from agentrl.prefix_cache import FrozenPrefix, frozen_prefix_start
from tests.conftest import random_samples


def _model(layers: list[int], rank: int = 4):
    return load_model(ModelSpec(name="tiny-qwen2", seed=0, num_layers=4, lora=LoraSpec(rank=rank, layers=layers)))


def test_the_prefix_starts_at_the_lowest_trained_layer():
    assert frozen_prefix_start(_model([-1, -2])[0]) == 2
    assert frozen_prefix_start(_model([1, 3])[0]) == 1
    assert frozen_prefix_start(_model([0, 3])[0]) is None  # the bottom layer trains: nothing below it
    assert frozen_prefix_start(_model([], rank=0)[0]) is None  # full fine-tuning


@pytest.mark.parametrize("loss, kl", [("holder_seq", 0.0), ("grpo", 0.0), ("holder_seq", 0.1)])
def test_an_update_with_the_cache_equals_one_without_and_skips_the_frozen_layers(loss, kl, monkeypatch):
    """π_old's pass and the KL reference (this model with its adapters off) read the cache too."""
    model, tok = _model([-1, -2])
    samples = random_samples(12, len(tok), seed=7, max_len=40)
    for s in samples[::3]:
        s.temperature = 2.5  # per-row temperatures ride along
    calls = {"top": 0, "bottom": 0}
    bottom = model.model.layers[0]
    bottom.register_forward_hook(lambda *_: calls.__setitem__("bottom", calls["bottom"] + 1))
    top = FrozenPrefix.top

    def counted(self, *args, **kwargs):
        calls["top"] += 1
        return top(self, *args, **kwargs)

    monkeypatch.setattr(FrozenPrefix, "top", counted)
    results = {}
    for cache in (False, True):
        m = copy.deepcopy(model)
        m.model.layers[0]._forward_hooks.clear()
        m.model.layers[0].register_forward_hook(lambda *_: calls.__setitem__("bottom", calls["bottom"] + 1))
        calls.update(top=0, bottom=0)
        cfg = LearnerConfig(
            lr=1e-2, mini_batches=3, epochs=3, micro_batch_tokens=120, kl_coef=kl, frozen_prefix_cache=cache
        )
        learner = Learner(m, cfg, AlgoConfig(loss=loss), ref_model="base" if kl else None)
        metrics = learner.update(samples, p=0.5)
        results[cache] = (metrics, [p.detach().clone() for p in learner.params], dict(calls))
        assert not learner._prefix or not learner._prefix.states  # emptied after the update
    (m0, w0, c0), (m1, w1, c1) = results[False], results[True]
    assert c0["top"] == 0 and c1["top"] > 0
    # without the cache the bottom layer runs in π_old's pass and in every epoch; with it, in π_old's pass only
    # (it fills the cache) and once more for the check
    assert c1["bottom"] < c0["bottom"] / 3 + 2, (c0, c1)
    for a, b in zip(w0, w1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert m0["train/loss"] == pytest.approx(m1["train/loss"], rel=1e-4, abs=1e-6)


def test_the_cache_is_off_when_it_cannot_act_and_checks_itself():
    model, tok = _model([0, 3])
    with pytest.warns(UserWarning, match="nothing to cache"):
        learner = Learner(model, LearnerConfig(epochs=2, frozen_prefix_cache=True))
    assert learner._prefix is None
    assert Learner(_model([-1])[0], LearnerConfig(epochs=1, frozen_prefix_cache=True))._prefix is None  # one pass
    prefix = FrozenPrefix(1)
    full, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long)
    assert prefix.check(full, full + 1e-4, mask) and prefix.checked and not prefix.disabled
    wrong = FrozenPrefix(1)
    wrong.states[0] = full[0]
    with pytest.warns(UserWarning, match="the cache is off for the rest of the run"):
        assert not wrong.check(full, full * 1.5, mask)
    assert wrong.disabled and not wrong.states and not wrong.has([0])


def test_a_failed_check_turns_the_cache_off_and_the_update_is_the_one_without_it(monkeypatch):
    """A cached path that fails its check (forced here: tolerance below 0) is not used: the run goes on with full
    forwards, and the update equals the cache-off one (not the cached one, not a crash)."""
    import agentrl.prefix_cache as prefix_cache

    model, tok = _model([-1, -2])
    samples = random_samples(12, len(tok), seed=7, max_len=40)
    results = []
    for cache in (False, True):
        m = copy.deepcopy(model)
        cfg = LearnerConfig(lr=1e-2, mini_batches=3, epochs=3, micro_batch_tokens=120, frozen_prefix_cache=cache)
        learner = Learner(m, cfg)
        monkeypatch.setattr(prefix_cache, "CHECK_RTOL", -1.0)
        if cache:
            with pytest.warns(UserWarning, match="the cache is off"):
                metrics = learner.update(samples, p=0.5)
            assert learner._prefix is not None and learner._prefix.disabled
            metrics = [metrics, learner.update(samples, p=0.5)]  # a second update: no check, no warning, no cache
        else:
            metrics = [learner.update(samples, p=0.5), learner.update(samples, p=0.5)]
        results.append(([p.detach().clone() for p in m.parameters() if p.requires_grad], metrics))
    (w0, m0), (w1, m1) = results
    for a, b in zip(w0, w1):
        assert torch.equal(a, b)
    assert [m["train/loss"] for m in m0] == [m["train/loss"] for m in m1]


def test_the_check_passes_under_bf16_autocast():
    """bf16 changes the last bits with the micro-batch's shape; the check is relative, so only a wrong path fails."""
    model, tok = _model([-1, -2])
    cfg = LearnerConfig(lr=1e-2, mini_batches=2, epochs=2, micro_batch_tokens=90, frozen_prefix_cache=True)
    learner = Learner(model, cfg, precision="bf16")
    learner.update(random_samples(10, len(tok), seed=3, max_len=40), p=1.0)
    assert learner._prefix is not None and learner._prefix.checked
