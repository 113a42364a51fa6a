"""Constrained decoding over admissible actions: every reply names one, and the learner scores the very
distribution the sampler drew from (restricted to the allowed tokens, renormalised)."""

from __future__ import annotations

import torch

from agentrl.algo import AlgoConfig
from agentrl.learner import Learner, LearnerConfig
from agentrl.policies.base import SamplingParams, allowed_next, allowed_per_token
from agentrl.policies.hf import HFPolicy
from agentrl.types import Sample
from tests.conftest import make_tiny


def _candidates(tok, replies):
    return [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in replies]


def test_the_trie_lists_exactly_the_continuations():
    cands = [[1, 2, 9], [1, 3, 9], [4, 9]]
    assert allowed_next(cands, []) == [1, 4] and allowed_next(cands, [1]) == [2, 3] and allowed_next(cands, [7]) == []
    assert allowed_per_token(cands, [1, 3, 9]) == [[1, 4], [2, 3], [9]]


def test_constrained_samples_are_candidates_and_their_log_probs_are_the_learners():
    model, tok = make_tiny()
    replies = ["go to desk 1", "go to bed 2", "take mug 1 from desk 1", "look"]
    cands = _candidates(tok, replies)
    policy = HFPolicy(model, tok)
    prompts = [tok("You are in a room.", add_special_tokens=False)["input_ids"]] * 12
    sampling = SamplingParams(temperature=0.8, max_new_tokens=32, seed=0, logprobs=True)
    outs = policy.generate(prompts, sampling, [cands] * 12)
    assert all(o.token_ids in cands and o.text in replies for o in outs)
    assert len({o.text for o in outs}) > 1  # it samples, among the candidates
    learner = Learner(model, LearnerConfig(), AlgoConfig())
    for prompt, out in zip(prompts, outs):
        ids = prompt + out.token_ids
        mask = [0] * len(prompt) + [1] * len(out.token_ids)
        restricted = Sample(ids, mask, allowed=allowed_per_token(cands, out.token_ids), temperature=0.8)
        free = Sample(ids, mask, temperature=0.8)
        lp_restricted, lp_free = learner.log_probs(model, [restricted, free])
        assert torch.allclose(lp_restricted[len(prompt) :], torch.tensor(out.logprobs), atol=1e-5)
        assert (lp_restricted[len(prompt) :] >= lp_free[len(prompt) :] - 1e-6).all()  # renormalised: never lower
        forced = [k for k, a in enumerate(allowed_per_token(cands, out.token_ids)) if len(a) == 1]
        assert all(abs(float(lp_restricted[len(prompt) + k])) < 1e-6 for k in forced)  # one choice: log 1 = 0


def test_skipping_forced_tokens_is_token_by_token_decoding_in_fewer_calls():
    """Forced tokens (one allowed continuation) are fed with the next sampled token: the same greedy replies and
    log-probs as HF generate's token-by-token path, for left-padded prompts of different lengths, sampled replies
    scored as the learner scores them (also under top-p), in fewer model calls than reply tokens."""
    model, tok = make_tiny()
    replies = [
        "<action>go to desk 1</action>",
        "<action>go to bed 2</action>",
        "<action>take mug 1 from desk 1</action>",
    ]
    cands = _candidates(tok, replies)
    texts = ["You are in a room.", "Hi", "You see a desk 1 and a bed 2 and a mug on the desk. What now?"] * 2
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    policy = HFPolicy(model, tok)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    greedy = SamplingParams(temperature=0.0, max_new_tokens=32, logprobs=True, stop=["</action>"])
    fast = policy.generate(prompts, greedy, [cands] * len(prompts))
    fast_calls, calls[:] = len(calls), []
    policy.skip_forced = False
    slow = policy.generate(prompts, greedy, [cands] * len(prompts))
    assert [o.token_ids for o in fast] == [o.token_ids for o in slow] and all(o.text in replies for o in fast)
    assert [o.finish_reason for o in fast] == [o.finish_reason for o in slow] == ["stop"] * len(prompts)
    for a, b in zip(fast, slow):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
    assert fast_calls < len(calls) and fast_calls < max(len(o.token_ids) for o in fast)
    policy.skip_forced = True
    learner = Learner(model, LearnerConfig(), AlgoConfig())
    for top_p in (1.0, 0.7):
        sampling = SamplingParams(temperature=1.5, top_p=top_p, max_new_tokens=32, seed=1, logprobs=True)
        outs = policy.generate(prompts * 4, sampling, [cands] * len(prompts) * 4)
        assert all(o.token_ids in cands for o in outs) and len({o.text for o in outs}) > 1
        for prompt, out in zip(prompts * 4, outs):
            mask = [0] * len(prompt) + [1] * len(out.token_ids)
            allowed = allowed_per_token(cands, out.token_ids)
            sample = Sample(prompt + out.token_ids, mask, allowed=allowed, temperature=1.5)
            (lp,) = learner.log_probs(model, [sample])
            if top_p == 1.0:
                assert torch.allclose(lp[len(prompt) :], torch.tensor(out.logprobs), atol=1e-5)
            else:  # the nucleus renormalises over fewer tokens: never less likely than the full restriction
                assert (torch.tensor(out.logprobs) >= lp[len(prompt) :] - 1e-5).all()


def test_the_learner_trains_on_the_restricted_distribution():
    model, tok = make_tiny()
    cands = _candidates(tok, ["north", "south"])
    prompt = tok("Which way?", add_special_tokens=False)["input_ids"]
    learner = Learner(model, LearnerConfig(lr=1e-2, mini_batches=1, entropy_coef=0.01), AlgoConfig())
    samples = []
    for k, c in enumerate(cands * 4):
        allowed = allowed_per_token(cands, c)
        samples.append(
            Sample(prompt + c, [0] * len(prompt) + [1] * len(c), advantage=1.0 if k % 2 == 0 else -1.0, allowed=allowed)
        )
    before = learner.log_probs(model, samples[:2])
    metrics = learner.update(samples, p=0.0)
    after = learner.log_probs(model, samples[:2])
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    first = len(prompt)  # the first reply token decides north vs south
    assert after[0][first] > before[0][first] and after[1][first] < before[1][first]


def test_cuebandit_learns_fast_with_constrained_decoding(tmp_path):
    """Every reply is an admissible word, so exploration goes straight to the cue → word mapping. Measured
    (seed 0): greedy panel success 25% → 100% by iteration 75 (holderpo) and 50 (grpo) of 100; free decoding needs
    ~250 iterations (test_trainer). A greedy policy that ignores the cue scores 25%, so ≥ 90% needs the cue."""
    from agentrl.config import load_config
    from agentrl.metrics import read_metrics
    from agentrl.trainer import train

    overrides = ["experiment=cuebandit", "rollout.constrained_actions=true", "trainer.iterations=100"]
    result = train(load_config([*overrides, "trainer.eval_every=50", f"trainer.run_dir={tmp_path}"]))
    rows = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert all(r["rollout/invalid_rate"] == 0.0 for r in rows)  # valid by construction
    assert result["after"]["eval/panel/success"] >= 0.9, result["after"]


def test_constrained_decoding_needs_a_format_that_can_spell_the_reply():
    import pytest

    from agentrl.config import load_config, validate_config
    from agentrl.errors import ConfigError

    with pytest.raises(ConfigError, match="needs env.prompt.reasoning=false"):
        validate_config(load_config(["env=textworld", "rollout.constrained_actions=true"]), resources=False)
    with pytest.raises(ConfigError, match="AnswerPromptFormat has no constrained_reply"):
        validate_config(load_config(["env=math", "rollout.constrained_actions=true"]), resources=False)


def test_aggregating_over_chosen_tokens_leaves_forced_ones_out_and_is_a_no_op_without_constraints():
    """algo.aggregate_over=chosen: the learner marks the action tokens that had one allowed token (forced) and the
    sequence-level loss aggregates over the others; with no constrained row the update is identical to
    aggregate_over=generated (weights and metrics)."""
    import copy

    from agentrl.algo import AggregateOver
    from agentrl.scoring import collate, forced_positions

    model, tok = make_tiny()
    cands = _candidates(tok, ["go to desk 1", "go to bed 2", "look"])
    prompt = tok("You are in a room.", add_special_tokens=False)["input_ids"]
    rows = []
    for k, c in enumerate(cands * 2):
        allowed = allowed_per_token(cands, c)
        mask = [0] * len(prompt) + [1] * len(c)
        rows.append(Sample(prompt + c, mask, advantage=1.0 if k % 2 else -1.0, allowed=allowed))
    batch = collate(rows, range(len(rows)), torch.device("cpu"))
    forced = forced_positions(batch)
    for r, c in enumerate(cands * 2):
        expected = [len(a) == 1 for a in allowed_per_token(cands, c)]
        assert forced[r, len(prompt) : len(prompt) + len(c)].tolist() == expected
        assert not forced[r, : len(prompt)].any() and not forced[r, len(prompt) + len(c) :].any()
    assert forced.any() and not forced.all()

    def update(samples, over):
        m = copy.deepcopy(model)
        learner = Learner(m, LearnerConfig(lr=1e-2, mini_batches=2, epochs=2), AlgoConfig(aggregate_over=over))
        metrics = learner.update(samples, p=-1.0)
        return metrics, [prm.detach().clone() for prm in m.parameters()]

    free = [Sample(s.input_ids, s.action_mask, advantage=s.advantage) for s in rows]
    (m0, w0), (m1, w1) = update(free, AggregateOver.generated), update(free, AggregateOver.chosen)
    assert m0 == m1 and all(torch.equal(a, b) for a, b in zip(w0, w1))
    (c0, _), (c1, _) = update(rows, AggregateOver.generated), update(rows, AggregateOver.chosen)
    assert c0["train/loss"] != c1["train/loss"]  # constrained rows: the forced tokens no longer count
