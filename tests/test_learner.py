"""Learner on tiny random Qwen2/Llama models built in code (no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.algo import AlgoConfig
from agentrl.learner import Learner, LearnerConfig
from agentrl.rollout import ExplorationConfig
from agentrl.scoring import collate, length_grouped, token_log_probs
from tests.conftest import make_tiny, random_samples


def _reference_log_probs(model, batch):
    """Full-vocabulary log_softmax over every position: the plain, memory-hungry way."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()  # [B, T, V]
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
    out = torch.zeros(batch.input_ids.shape)
    out[:, 1:] = lp * batch.action_mask[:, 1:]
    return out


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_chunked_log_probs_match_full_logits(name):
    model, tok = make_tiny(name)
    samples = random_samples(6, len(tok), seed=1)
    batch = collate(samples, range(6), torch.device("cpu"))
    with torch.no_grad():
        ours, entropy = token_log_probs(model, batch, chunk=5, entropy="value")
        ref = _reference_log_probs(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()[:, :-1]
        full_entropy = torch.distributions.Categorical(logits=logits).entropy()  # [B, T-1]
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (ours[batch.action_mask == 0] == 0).all()
    on = batch.action_mask[:, 1:].bool()
    assert torch.allclose(entropy[:, 1:][on], full_entropy[on], atol=1e-4)
    assert (entropy[batch.action_mask == 0] == 0).all()


def test_length_grouping_respects_budget_and_covers_all():
    samples = random_samples(30, 100, seed=2, min_len=5, max_len=60)
    groups = length_grouped(samples, range(30), token_budget=128)
    assert sorted(i for g in groups for i in g) == list(range(30))
    padded = 0
    for g in groups:
        longest = max(len(samples[i].input_ids) for i in g)
        assert len(g) * longest <= max(128, len(samples[g[0]].input_ids))
        padded += len(g) * longest
    assert 1 - sum(len(s.input_ids) for s in samples) / padded < 0.1


def test_every_trainable_parameter_changes():
    model, tok = make_tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = Learner(model, LearnerConfig(lr=1e-2, mini_batches=1))
    metrics = learner.update(random_samples(8, len(tok), seed=3), p=1.0)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert metrics["train/skipped_steps"] == 0 and metrics["train/grad_norm"] > 0


@pytest.mark.parametrize(
    "loss, kwargs, kl",
    [
        ("holder_seq", {}, 0.0),
        ("holder_token", {}, 0.05),
        ("grpo", {"agg": "token-mean"}, 0.0),
        ("grpo", {"agg": "seq-mean-token-sum-norm", "norm_length": 16}, 0.1),
    ],
)
def test_accumulation_equals_one_big_batch(loss, kwargs, kl):
    model, tok = make_tiny()
    ref_model = copy.deepcopy(model)
    for prm in ref_model.parameters():  # make the reference differ so the KL term has gradient
        prm.data.add_(0.01 * torch.randn_like(prm))
    samples = random_samples(10, len(tok), seed=4)
    grads = []
    for budget in (10_000, 40):  # one micro-batch vs many
        m = copy.deepcopy(model)
        cfg = LearnerConfig(kl_coef=kl, micro_batch_tokens=budget)
        learner = Learner(m, cfg, AlgoConfig(loss=loss, loss_kwargs=kwargs), ref_model=ref_model if kl else None)
        old = learner.log_probs(m, samples)
        noise = torch.Generator().manual_seed(0)
        old = [o + 0.05 * torch.randn(o.shape, generator=noise) for o in old]  # off-policy: p and the clip matter
        ref = learner.log_probs(ref_model, samples) if kl else None
        loss_value, _, _ = learner.accumulate_gradients(samples, list(range(10)), old, ref, p=2.0)
        grads.append((loss_value, [prm.grad.clone() for prm in m.parameters()]))
    (l1, g1), (l2, g2) = grads
    assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-6)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_non_finite_loss_skips_the_step_and_keeps_weights():
    model, tok = make_tiny()
    before = [p.detach().clone() for p in model.parameters()]
    samples = random_samples(4, len(tok), seed=5)
    samples[0].advantage = float("nan")
    learner = Learner(model, LearnerConfig(lr=1e-2, mini_batches=1))
    with pytest.warns(UserWarning, match="skipped an optimizer step"):
        metrics = learner.update(samples, p=1.0)
    assert metrics["train/skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_golden_loss_value():
    """Pinned: a silent numerical change in masks, log-probs or the loss fails here."""
    model, tok = make_tiny(seed=0)
    samples = random_samples(8, len(tok), seed=6)
    learner = Learner(model, LearnerConfig(lr=1e-3, mini_batches=2), AlgoConfig(loss="holder_seq"))
    history = [learner.update(samples, p=2.0)["train/loss"] for _ in range(2)]
    assert history == pytest.approx(GOLDEN, rel=1e-4)


# Measured once with torch 2.13 CPU (fp32); the second iteration runs off-policy mini-batches, so p matters.
GOLDEN = [-0.07015541195869446, -0.08557313680648804]


def test_bf16_autocast_runs():
    model, tok = make_tiny()
    learner = Learner(model, LearnerConfig(lr=1e-3), precision="bf16")
    metrics = learner.update(random_samples(4, len(tok), seed=7), p=-1.0)
    assert metrics["train/skipped_steps"] == 0


def test_learner_state_round_trip():
    model, tok = make_tiny()
    learner = Learner(model, LearnerConfig(lr=1e-3))
    learner.update(random_samples(4, len(tok), seed=8), p=1.0)
    state = copy.deepcopy(learner.state_dict())
    other = Learner(copy.deepcopy(model), LearnerConfig(lr=1e-3))
    other.load_state_dict(state)
    assert other.optimizer_steps == learner.optimizer_steps == 2
    assert torch.equal(other.shuffle.get_state(), learner.shuffle.get_state())


def test_single_on_policy_step_skips_old_log_probs_without_changing_the_gradient():
    model, tok = make_tiny()
    samples = random_samples(6, len(tok), seed=9)
    grads = []
    for skip in (True, False):
        m = copy.deepcopy(model)
        learner = Learner(m, LearnerConfig(mini_batches=1), AlgoConfig(loss="holder_seq"))
        old = None if skip else learner.log_probs(m, samples)
        _, metrics, _ = learner.accumulate_gradients(samples, list(range(6)), old, None, p=3.0)
        grads.append([prm.grad.clone() for prm in m.parameters()])
        if skip:
            assert metrics["entropy"] > 0  # measured in the training pass instead
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_rollout_log_probs_as_old_give_the_recomputed_update_without_the_pass():
    """learner.old_log_probs=rollout: when the sampler scored what the learner scores, the update is the one that
    recomputes π_old, with one no-grad pass fewer; a sample without sampler log-probs is an error, not a guess."""
    from dataclasses import replace

    model, tok = make_tiny()
    samples = random_samples(8, len(tok), seed=3)
    own = Learner(copy.deepcopy(model), LearnerConfig()).log_probs(model, samples)
    samples = [
        replace(s, rollout_logprobs=[float(x) for x, m in zip(lp, s.action_mask) if m]) for s, lp in zip(samples, own)
    ]
    models, passes = [], []
    for mode in ("recompute", "rollout"):
        m = copy.deepcopy(model)
        learner = Learner(m, LearnerConfig(lr=1e-2, mini_batches=4, old_log_probs=mode), AlgoConfig(loss="holder_seq"))
        calls = []
        learner.log_probs = lambda *a, _f=learner.log_probs, _c=calls, **k: _c.append(1) or _f(*a, **k)
        metrics = learner.update(samples, p=-1.0)
        assert metrics["mismatch/max_abs"] < 1e-5 and metrics["train/optimizer_steps"] == 4
        models.append(m)
        passes.append(len(calls))
    assert passes == [1, 0]
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    learner = Learner(copy.deepcopy(model), LearnerConfig(mini_batches=2, old_log_probs="rollout"))
    with pytest.raises(ValueError, match="no sampler log-probs"):
        learner.update([replace(s, rollout_logprobs=None) for s in samples], p=1.0)
    assert any("old_log_probs" in m for m in LearnerConfig(old_log_probs="cached").validate())


def test_update_progress_counts_every_micro_batch_of_every_pass(monkeypatch):
    import agentrl.learner as learner_module

    bars = []

    class Spy:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.descs = total, 0, set()
            bars.append(self)

        def set_description(self, desc, refresh=True):
            self.descs.add(desc)

        def update(self, n=1):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(learner_module, "tqdm", Spy)
    model, tok = make_tiny()
    ref = copy.deepcopy(model).eval()
    cfg = LearnerConfig(mini_batches=2, micro_batch_tokens=64, kl_coef=0.1)
    learner = Learner(model, cfg, AlgoConfig(), ref_model=ref)
    learner.update(random_samples(12, len(tok)), p=0.5, progress=True)
    (bar,) = bars
    assert bar.n == bar.total > 2 * 2  # more ticks than optimizer steps: micro-batches of all three passes
    assert {"old log-probs", "ref log-probs", "update step 1/2", "update step 2/2"} <= bar.descs


def test_activation_checkpointing_gives_the_same_update():
    """learner.activation_checkpointing recomputes activations in backward: same loss, gradient and weights."""
    model, tok = make_tiny()
    other = copy.deepcopy(model)
    samples = random_samples(8, len(tok), seed=3)
    plain = Learner(model, LearnerConfig(lr=1e-2, mini_batches=2, micro_batch_tokens=64))
    ckpt = Learner(other, LearnerConfig(lr=1e-2, mini_batches=2, micro_batch_tokens=64, activation_checkpointing=True))
    calls = {"plain": 0, "ckpt": 0}
    for key, m in (("plain", model), ("ckpt", other)):
        m.model.layers[0].self_attn.register_forward_pre_hook(
            lambda *_, key=key: calls.__setitem__(key, calls[key] + 1)
        )
    a, b = plain.update(samples, p=0.5), ckpt.update(samples, p=0.5)
    assert calls["ckpt"] > calls["plain"]  # the layer re-entered attention in backward: checkpointing
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-6, abs=1e-8)
    assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert max(float((p - q).abs().max()) for p, q in zip(model.parameters(), make_tiny()[0].parameters())) > 1e-3


def test_temperature_compensation_scales_each_rows_advantage_by_its_sampling_temperature():
    """exploration.temperature_compensation: the loss sees advantage × the temperature each row was sampled at, so a row's push on the logits does not shrink with T: the gradient of
    T·log softmax(z/T)_a is e_a − softmax(z/T). Same gradients as scaling the advantages by hand; off by default."""
    z = torch.randn(7, dtype=torch.float64, requires_grad=True)
    for t in (0.5, 3.0, 40.0):
        (grad,) = torch.autograd.grad(t * torch.log_softmax(z / t, -1)[2], z)
        expected = torch.nn.functional.one_hot(torch.tensor(2), 7).double() - torch.softmax(z / t, -1)
        assert torch.allclose(grad, expected.detach())
    model, tok = make_tiny()
    samples = random_samples(6, len(tok), seed=6)
    temperatures = [4.0, 3.0, 0.5, 10.0, 3.0, 2.0]
    for s, t in zip(samples, temperatures):
        s.temperature = t

    def grads(compensate: bool, scale: list[float]) -> list[torch.Tensor]:
        m = copy.deepcopy(model)
        rows = copy.deepcopy(samples)
        for s, k in zip(rows, scale):
            s.advantage *= k
        learner = Learner(m, LearnerConfig(), temperature_compensation=compensate)
        old = learner.log_probs(m, rows)
        noise = torch.Generator().manual_seed(0)
        old = [o + 0.05 * torch.randn(o.shape, generator=noise) for o in old]  # off-policy: the clip acts
        learner.accumulate_gradients(rows, list(range(len(rows))), old, None, p=0.5)
        return [prm.grad.clone() for prm in m.parameters()]

    by_hand = temperatures
    compensated, manual = grads(True, [1.0] * 6), grads(False, by_hand)
    plain = grads(False, [1.0] * 6)
    for a, b in zip(compensated, manual):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert max((a - b).abs().max() for a, b in zip(compensated, plain)) > 1e-3  # it changes the update
    assert not ExplorationConfig().temperature_compensation


def test_target_kl_stops_the_update_once_the_policy_moved_far_and_is_a_no_op_when_it_did_not():
    """learner.target_kl (PPO's early stop): at lr 0.5 the second mini-batch already sees a KL far above 1.5 ·
    1e-6, so only the first step is taken (the next test: exactly its weights); with a target no update reaches,
    the update is bit-identical to one without the option."""
    model, tok = make_tiny()
    samples = random_samples(8, len(tok), seed=11)

    def run(target_kl):
        m = copy.deepcopy(model)
        cfg = LearnerConfig(lr=0.5, mini_batches=4, shuffle=False, target_kl=target_kl)
        metrics = Learner(m, cfg, AlgoConfig(loss="holder_seq")).update(samples, p=1.0)
        return metrics, [prm.detach().clone() for prm in m.parameters()]

    stopped, w_stopped = run(1e-6)
    assert stopped["train/optimizer_steps"] == 1 and stopped["train/kl_stopped_steps"] == 3
    assert stopped["train/ppo_kl"] > 0
    _, w_plain = run(None)  # the same first step, then three more
    assert not all(torch.equal(a, b) for a, b in zip(w_stopped, w_plain))
    free, w_free = run(1e6)
    assert free["train/optimizer_steps"] == 4 and free["train/kl_stopped_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(w_free, w_plain))


def test_target_kl_takes_exactly_the_first_step_when_stopped_at_the_second():
    """An update stopped at its second step leaves the weights of its first step alone (rows 0-1 with
    shuffle=false): the stopped step's gradients are dropped, not applied."""
    model, tok = make_tiny()
    samples = random_samples(8, len(tok), seed=12)
    stopped, one_step = copy.deepcopy(model), copy.deepcopy(model)
    Learner(stopped, LearnerConfig(lr=0.5, mini_batches=4, shuffle=False, target_kl=1e-6)).update(samples, p=1.0)
    Learner(one_step, LearnerConfig(lr=0.5, mini_batches=1, shuffle=False)).update(samples[:2], p=1.0)
    assert all(torch.equal(a, b) for a, b in zip(stopped.parameters(), one_step.parameters()))


@pytest.mark.parametrize("value", [0.0, -0.1, float("nan")])
def test_target_kl_must_be_positive(value):
    assert any("learner.target_kl" in problem for problem in LearnerConfig(target_kl=value).validate())


def test_adamw_is_fused_on_cuda_only():
    """The fused kernel where it was measured faster (CUDA); CPU keeps torch's default, which its curves used."""
    from agentrl.learner import fused_adamw

    assert fused_adamw(torch.device("cuda", 0)) is True
    assert fused_adamw(torch.device("cpu")) is None
    model, _ = make_tiny()
    assert Learner(model, LearnerConfig()).optimizer.defaults["fused"] is None
