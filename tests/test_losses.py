"""Policy losses: hand-computed cases, the paper's special cases, stability, and float64 reference gradients."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.errors import ConfigError
from agentrl.losses import POLICY_LOSSES, get_policy_loss, holder_log_mean, kl_k3

LN2 = math.log(2.0)


def _one(deltas, adv, mask=None):
    """[1, T] log_prob with old_log_prob = 0, so Δ = log_prob."""
    lp = torch.tensor([deltas], dtype=torch.float32, requires_grad=True)
    old = torch.zeros_like(lp)
    m = torch.ones_like(lp) if mask is None else torch.tensor([mask], dtype=torch.float32)
    return lp, old, torch.tensor([adv], dtype=torch.float32), m


# Token ratios r = [2, 0.5] (Δ = ±ln 2); ε = 0.2.
@pytest.mark.parametrize(
    "p, adv, expected",
    [
        (1.0, 1.0, -1.2),  # ρ = (2 + 0.5)/2 = 1.25, Â>0 → min(1.25, 1.2) = 1.2 → L = −1.2
        (1.0, -1.0, 1.25),  # Â<0 → max(1.25, 0.8) = 1.25 → L = +1.25
        (0.0, 1.0, -1.0),  # geometric mean √(2·0.5) = 1 → L = −1
        (2.0, -1.0, math.sqrt(2.125)),  # ρ = √((4 + 0.25)/2) = 1.4577 → L = +1.4577
        (-1.0, 1.0, -0.8),  # harmonic mean 1/((0.5 + 2)/2) = 0.8 → min(0.8, 1.2) → L = −0.8
        (-1.0, -1.0, 0.8),  # Â<0 → max(0.8, 0.8) = 0.8 → L = +0.8
        (1.0, 0.0, 0.0),  # Â = 0 → no signal
    ],
)
def test_holder_seq_hand_computed(p, adv, expected):
    loss, _ = POLICY_LOSSES["holder_seq"](*_one([LN2, -LN2], adv), p=p)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "p, adv, expected",
    [
        (1.0, 1.0, -0.85),  # clip tokens first: Â>0 → [min(2, 1.2), 0.5] = [1.2, 0.5]; mean 0.85
        (1.0, -1.0, 1.4),  # Â<0 → [2, max(0.5, 0.8)] = [2, 0.8]; mean 1.4
        (0.0, 1.0, -math.sqrt(1.2 * 0.5)),  # geometric mean of [1.2, 0.5]
        (2.0, 1.0, -math.sqrt((1.44 + 0.25) / 2)),  # power mean p=2 of [1.2, 0.5]
    ],
)
def test_holder_token_hand_computed(p, adv, expected):
    loss, _ = POLICY_LOSSES["holder_token"](*_one([LN2, -LN2], adv), p=p)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_grpo_aggregations_hand_computed():
    # seq 1: r = [2, 0.5], Â = 1 → per-token max(−Âr, −Â clip r) = [−1.2, −0.5]
    # seq 2: r = [1, ·] with only the first token valid, Â = 1 → [−1]
    lp = torch.tensor([[LN2, -LN2], [0.0, 5.0]])
    old = torch.zeros_like(lp)
    adv = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    grpo = POLICY_LOSSES["grpo"]
    assert grpo(lp, old, adv, mask)[0].item() == pytest.approx((-0.85 + -1.0) / 2)  # seq-mean-token-mean
    assert grpo(lp, old, adv, mask, agg="token-mean")[0].item() == pytest.approx((-1.2 - 0.5 - 1.0) / 3)
    drgrpo = grpo(lp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_length=4)[0]
    assert drgrpo.item() == pytest.approx(((-1.7) / 4 + (-1.0) / 4) / 2)
    with pytest.raises(ConfigError, match="norm_length"):
        grpo(lp, old, adv, mask, agg="seq-mean-token-sum-norm")
    with pytest.raises(ConfigError, match="did you mean 'token-mean'"):
        grpo(lp, old, adv, mask, agg="token_mean")


def test_grpo_dual_clip_caps_negative_advantages_hand_computed():
    # Â = −1, token ratios r = [5, 2, 0.5]: PPO's pessimistic terms −Â·max(r, 0.8) = [5, 2, 0.8]; the dual clip
    # c = 3 caps them at −Â·c = 3, so the r = 5 token contributes 3 and no gradient; the others are unchanged.
    lp, old, adv, m = _one([math.log(5.0), LN2, -LN2], -1.0)
    grpo = POLICY_LOSSES["grpo"]
    loss, metrics = grpo(lp, old, adv, m, agg="token-mean", dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 + 0.8) / 3, rel=1e-6)
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([0.0, 2.0 / 3, 0.0], abs=1e-6)  # capped, r·(−Â)/3, clipped at 0.8
    assert metrics["dual_clip_frac"].item() == pytest.approx(1 / 3)
    # without the cap the r = 5 token pushes with its full ratio
    lp2, old2, adv2, m2 = _one([math.log(5.0), LN2, -LN2], -1.0)
    plain, _ = grpo(lp2, old2, adv2, m2, agg="token-mean")
    plain.backward()
    assert plain.item() == pytest.approx((5.0 + 2.0 + 0.8) / 3, rel=1e-6)
    assert lp2.grad[0, 0].item() == pytest.approx(5.0 / 3, rel=1e-6)
    # positive advantages are untouched by the cap
    pos, _ = grpo(*_one([math.log(5.0), LN2, -LN2], 1.0), agg="token-mean", dual_clip=3.0)
    assert pos.item() == pytest.approx(-(1.2 + 1.2 + 0.5) / 3, rel=1e-6)
    with pytest.raises(ConfigError, match="dual_clip must be > 1"):
        grpo(*_one([0.0], -1.0), dual_clip=1.0)


def test_grpo_preset_is_the_references_baseline(tmp_path):
    from agentrl.config import load_config

    cfg = load_config(["algo=grpo", f"trainer.run_dir={tmp_path}"])
    assert cfg.algo.loss == "grpo"
    assert dict(cfg.algo.loss_kwargs) == {"agg": "token-mean", "dual_clip": 3.0}  # verl: token-mean, clip_ratio_c 3


def test_kl_k3_hand_computed():
    # logp = ln 0.5, ref = ln 0.25: d = ref − logp = −ln 2 → e^d − d − 1 = 0.5 + ln 2 − 1 = 0.193147
    lp = torch.tensor([[math.log(0.5), 0.0]])
    ref = torch.tensor([[math.log(0.25), 3.0]])
    assert kl_k3(lp, ref, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5 + LN2 - 1.0, rel=1e-5)
    assert kl_k3(lp, lp, torch.ones(1, 2)).item() == 0.0


def _batch(seed=0, b=4, t=7):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(b, t, generator=g) * 0.3).requires_grad_()
    old = torch.randn(b, t, generator=g) * 0.3
    adv = torch.randn(b, generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    return lp, old, adv, mask


def _declared(name, **options):
    """The options a loss declares (as the learner passes them): losses take no **kwargs and reject the rest."""
    params = inspect.signature(POLICY_LOSSES[name]).parameters
    return {k: v for k, v in options.items() if k in params}


def _value_and_grad(name, lp, old, adv, mask, **kw):
    lp = lp.detach().clone().requires_grad_()
    loss, _ = POLICY_LOSSES[name](lp, old, adv, mask, **_declared(name, **kw))
    loss.backward()
    return loss.detach(), lp.grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_special_cases(seed):
    lp, old, adv, mask = _batch(seed)
    pairs = [
        (("holder_seq", {"p": 1e-7}), ("gspo", {"p": 3.0})),  # p → 0 is GSPO; gspo declares no p
        (("holder_token", {"p": 0.0}), ("gmpo", {})),
        (("holder_token", {"p": 1.0}), ("grpo", {"agg": "seq-mean-token-mean"})),
    ]
    for (a, ka), (b, kb) in pairs:
        va, ga = _value_and_grad(a, lp, old, adv, mask, **ka)
        vb, gb = _value_and_grad(b, lp, old, adv, mask, **kb)
        assert torch.allclose(va, vb, atol=1e-6), (a, b)
        assert torch.allclose(ga, gb, atol=1e-6), (a, b)


def test_large_p_gives_extreme_ratios():
    delta = torch.tensor([[0.3, -0.2, 0.1, 0.25]])
    mask = torch.ones_like(delta)
    # |log ρ_p − max Δ| ≤ log(n)/p for p > 0; symmetric for the min.
    assert holder_log_mean(delta, mask, 200.0).item() == pytest.approx(0.3, abs=1.01 * math.log(4) / 200)
    assert holder_log_mean(delta, mask, -200.0).item() == pytest.approx(-0.2, abs=1.01 * math.log(4) / 200)
    assert holder_log_mean(delta, mask, 1.0).item() == pytest.approx(math.log(torch.exp(delta).mean().item()))


def test_empty_rows_give_ratio_one_and_zero_grad():
    lp = torch.tensor([[0.5, 0.2], [9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    for p in (-5.0, 0.0, 3.0):
        out = holder_log_mean(lp, mask, p)
        assert out[1].item() == 0.0
        (g,) = torch.autograd.grad(out.sum(), lp)
        assert torch.isfinite(g).all() and (g[1] == 0).all()


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_masked_positions_have_exactly_zero_gradient(name):
    lp, old, adv, mask = _batch(3)
    old = old.masked_fill(mask == 0, 40.0)  # garbage off the mask must not matter
    _, grad = _value_and_grad(name, lp, old, adv, mask, p=1.7, agg="token-mean")
    assert (grad[mask == 0] == 0).all()
    assert (grad[mask == 1] != 0).any()


def _reference_holder(lp, old, adv, mask, p, eps_low, eps_high, token_clip):
    """Independent float64 implementation straight from PAPER.md §2 (ratios, not log space)."""
    per_seq = []
    for i in range(lp.shape[0]):
        valid = mask[i] == 1
        r = torch.exp(lp[i][valid] - old[i][valid])
        a = adv[i]
        if token_clip:
            r = torch.minimum(r, torch.tensor(1 + eps_high, dtype=r.dtype)) if a > 0 else r
            r = torch.maximum(r, torch.tensor(1 - eps_low, dtype=r.dtype)) if a < 0 else r
            rho = (r.pow(p).mean()).pow(1 / p)
            per_seq.append(-a * rho)
        else:
            rho = (r.pow(p).mean()).pow(1 / p)
            clipped = rho.clamp(1 - eps_low, 1 + eps_high)
            per_seq.append(torch.maximum(-a * rho, -a * clipped))
    return torch.stack(per_seq).mean()


@pytest.mark.parametrize("name, token_clip", [("holder_seq", False), ("holder_token", True)])
@pytest.mark.parametrize("p", [-2.0, -0.5, 0.7, 1.0, 3.0])
def test_gradients_match_float64_reference(name, token_clip, p):
    lp, old, adv, mask = _batch(7, b=5, t=6)
    _, grad = _value_and_grad(name, lp, old, adv, mask, p=p, clip_low=0.1, clip_high=0.15)
    lp64 = lp.detach().double().requires_grad_()
    ref = _reference_holder(lp64, old.double(), adv.double(), mask, p, 0.1, 0.15, token_clip)
    ref.backward()
    assert torch.allclose(grad.double(), lp64.grad, atol=1e-5, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    p=st.floats(-64, 64, allow_nan=False),
    scale=st.floats(0, 80),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    name=st.sampled_from(sorted(POLICY_LOSSES)),
)
def test_finite_values_and_gradients(p, scale, seed, dtype, name):
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 9
    lp = (torch.rand(b, t, generator=g) * 2 - 1) * scale
    lp = lp.to(dtype).requires_grad_()
    old = torch.zeros(b, t, dtype=dtype)
    mask = (torch.rand(b, t, generator=g) > 0.5).float()
    mask[0] = 0.0  # one empty row every time
    adv = torch.randn(b, generator=g) * 3
    loss, metrics = POLICY_LOSSES[name](lp, old, adv, mask, **_declared(name, p=p, agg="token-mean"))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(lp.grad.float()).all()
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_metrics_include_required_keys():
    lp, old, adv, mask = _batch(0)
    for name in POLICY_LOSSES:
        _, metrics = POLICY_LOSSES[name](lp, old, adv, mask, **_declared(name, p=1.5))
        assert {"clip_frac", "ratio_mean", "ratio_min", "ratio_max", "ppo_kl"} <= set(metrics)
    _, metrics = POLICY_LOSSES["holder_seq"](lp, old, adv, mask, p=0.0)
    # at p = 0 the token weights are uniform: ESS fraction 1
    assert metrics["weight_ess_frac"].item() == pytest.approx(1.0, abs=1e-5)
    _, metrics = POLICY_LOSSES["holder_seq"](lp, old, adv, mask, p=30.0)
    assert metrics["weight_ess_frac"].item() < 0.9


def test_log_ratio_std_is_the_mean_over_rows_of_each_rows_spread_over_the_tokens_it_aggregates():
    """The adaptive p rule `dispersion` reads it: hand-computed, masked garbage ignored, forced tokens left out
    under algo.aggregate_over=chosen."""
    old = torch.zeros(3, 4)
    lp = torch.tensor([[0.1, -0.1, 9e9, 0.0], [0.3, 0.0, 0.0, 0.0], [0.2, 0.0, -0.2, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    expected = (0.1 + 0.0 + math.sqrt(0.08 / 3)) / 3  # row stds: 0.1; one token: 0; (0.2, 0, −0.2): √(0.08/3)
    for name in sorted(POLICY_LOSSES):
        _, metrics = POLICY_LOSSES[name](lp, old, torch.ones(3), mask, **_declared(name, p=1.0))
        assert metrics["log_ratio_std"].item() == pytest.approx(expected, rel=1e-5), name
    chosen = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0]])  # row 3's middle token forced (Δ exactly 0)
    _, metrics = POLICY_LOSSES["holder_seq"](lp, old, torch.ones(3), mask, p=1.0, aggregate_mask=chosen)
    assert metrics["log_ratio_std"].item() == pytest.approx((0.1 + 0.0 + 0.2) / 3, rel=1e-5)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_a_loss_rejects_options_it_does_not_take(name):
    lp, old, adv, mask = _batch(0)
    with pytest.raises(TypeError, match="agj"):
        POLICY_LOSSES[name](lp, old, adv, mask, agj="token-mean")


def test_unknown_loss_suggests_close_match():
    with pytest.raises(ConfigError, match="did you mean 'holder_seq'"):
        get_policy_loss("holder_sequence")


SEQUENCE_LOSSES = ["holder_seq", "holder_token", "gspo", "gmpo"]


@pytest.mark.parametrize("name", SEQUENCE_LOSSES)
@pytest.mark.parametrize("p", [1.0, 0.0, -1.0])
def test_forced_tokens_change_neither_loss_nor_gradient_when_aggregating_over_chosen_tokens(name, p):
    """algo.aggregate_over=chosen: a forced token (one allowed continuation: log-prob 0 under π_θ and π_old, no
    gradient) inserted anywhere into a reply, any number of times, changes neither the sequence-level loss nor the
    gradient of the chosen tokens' log-probs. Aggregating over every generated token instead, it does (the dilution
    the option removes: the mean is pulled toward ratio 1 and the clip binds later)."""
    fn = get_policy_loss(name)
    takes_p = "p" in inspect.signature(fn).parameters
    gen = torch.Generator().manual_seed(7)
    chosen_new = (torch.randn(3, 4, generator=gen) * 0.4 - 1.0).requires_grad_(True)  # [B, k] chosen log-probs
    chosen_old = torch.randn(3, 4, generator=gen) * 0.4 - 1.0
    adv = torch.tensor([1.0, -1.0, 0.5])
    options = {"num_seqs": 3, "clip_low": 0.2, "clip_high": 0.2, **({"p": p} if takes_p else {})}

    def run(forced_at: list[int], aggregate: bool) -> tuple[float, torch.Tensor]:
        cols_new, cols_old, chosen = [], [], []
        k = 0
        for col in range(4 + len(forced_at)):
            if col in forced_at:  # a forced token: log-prob exactly 0 on both sides, no gradient
                cols_new.append(torch.zeros(3))
                cols_old.append(torch.zeros(3))
                chosen.append(0)
            else:
                cols_new.append(chosen_new[:, k])
                cols_old.append(chosen_old[:, k])
                chosen.append(1)
                k += 1
        new, old = torch.stack(cols_new, -1), torch.stack(cols_old, -1)  # [B, T]
        mask = torch.ones_like(new)
        agg = torch.tensor(chosen, dtype=torch.float32).expand_as(new) if aggregate else None
        loss, _ = fn(new, old, adv, mask, aggregate_mask=agg, **options)
        (grad,) = torch.autograd.grad(loss, chosen_new)
        return float(loss.detach()), grad

    plain_loss, plain_grad = run([], aggregate=True)
    for forced_at in ([0], [1, 2], [0, 3, 5, 6, 7]):
        loss, grad = run(forced_at, aggregate=True)
        assert loss == pytest.approx(plain_loss, rel=1e-6, abs=1e-7) and torch.allclose(grad, plain_grad, atol=1e-6)
    diluted_loss, diluted_grad = run([0, 3, 5, 6, 7], aggregate=False)
    assert diluted_loss != pytest.approx(plain_loss, rel=1e-4) or not torch.allclose(
        diluted_grad, plain_grad, atol=1e-4
    )


def test_token_level_losses_take_no_aggregate_mask():
    """GRPO's token-level clip is unaffected by forced tokens: it declares no aggregate_mask, so the learner never
    passes one (algo.aggregate_over changes only the sequence-level losses)."""
    for name, fn in POLICY_LOSSES.items():
        declared = "aggregate_mask" in inspect.signature(fn).parameters
        assert declared == (name in SEQUENCE_LOSSES), name
