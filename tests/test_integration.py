"""Integration tier (real SmolLM2-135M-Instruct, generated ALFWorld games); CI runs it too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agentrl import envs
from agentrl.envs.pool import EnvPool, env_factory
from agentrl.learner import Learner, LearnerConfig
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.policies.models import ModelSpec, load_model
from agentrl.rollout import RolloutConfig, RolloutManager, Task, episode_stats
from agentrl.samples import build_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ModelSpec(name="smollm2-135m-instruct", device="cpu"))


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    import generate_alfworld

    out = tmp_path_factory.mktemp("alfworld_int")
    generate_alfworld.main(["--out", str(out), "--split", "train", "--num", "6", "--seed", "11"])
    return out


def test_smollm2_rollout_on_generated_alfworld(smollm2, games):
    model, tok = smollm2
    factory = env_factory("agentrl/ALFWorld-v0", data_path=str(games), split="train")
    cfg = RolloutConfig(
        group_size=2,
        max_turns=3,
        max_prompt_tokens=1536,
        num_workers=2,
        max_new_tokens=32,
        stop=["</action>"],
    )
    with EnvPool(factory, num_workers=2) as pool:
        fmt = envs.make_prompt_format("agentrl/ALFWorld-v0")
        manager = RolloutManager(pool, HFPolicy(model, tok), tok, fmt, cfg, seed=0)
        episodes = manager.run([Task(0, 0, "a"), Task(3, 1, "b")])
    assert len(episodes) == 4 and all(1 <= len(e.turns) <= 3 for e in episodes)
    assert all(e.truncation_reason in ("", "max_turns") for e in episodes)
    stats = episode_stats(episodes)
    invalid = sum(e.num_invalid for e in episodes)
    assert stats["rollout/invalid_rate"] == pytest.approx(invalid / sum(len(e.turns) for e in episodes))
    for e in episodes:
        for t in e.turns:
            assert t.penalty == (0.0 if t.valid else pytest.approx(0.1)) and t.reward >= 0.0
    samples = build_samples(episodes, mode="window")
    assert len(samples) == sum(len(e.turns) for e in episodes)
    print(f"SmolLM2 on ALFWorld: {stats}; timings {manager.timings.as_dict()}")


def test_smollm2_rollout_on_math(smollm2, shared_data):
    model, tok = smollm2
    factory = env_factory("agentrl/Math-v0", data_path=str(shared_data / "gsm8k_test.jsonl"))
    cfg = RolloutConfig(group_size=2, max_turns=1, max_new_tokens=48)
    with EnvPool(factory, num_workers=0) as pool:
        fmt = envs.make_prompt_format("agentrl/Math-v0")
        manager = RolloutManager(pool, HFPolicy(model, tok), tok, fmt, cfg, seed=0)
        episodes = manager.run([Task(i, i, f"m{i}") for i in range(3)])
    assert len(episodes) == 6 and all(len(e.turns) == 1 for e in episodes)
    assert all(e.total_reward in (0.0, 1.0, -0.1, 0.9) for e in episodes)


def test_smollm2_learner_log_probs_match_generation(smollm2):
    model, tok = smollm2
    policy = HFPolicy(model, tok)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Name a fruit."}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    (completion,) = policy.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True))
    from agentrl.types import Sample

    sample = Sample(ids + completion.token_ids, [0] * len(ids) + [1] * len(completion.token_ids))
    (lp,) = Learner(model, LearnerConfig()).log_probs(model, [sample])
    got = lp[torch.tensor(sample.action_mask, dtype=torch.bool)]
    assert torch.allclose(got, torch.tensor(completion.logprobs), atol=2e-4)
