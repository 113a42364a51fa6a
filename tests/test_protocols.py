"""Paper fidelity (issue #11): precision, per-row credit, reply rules, mini-batches in rows, reference prompts,
entropy bonus, p endpoints, and the paper experiment configs pinned to docs/PROTOCOLS.md."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.advantages import grpo_advantages
from agentrl.algo import AlgoConfig
from agentrl.config import load_config, validate_config
from agentrl.envs.prompting import AgentPromptFormat, AnswerPromptFormat, HistoryItem, project_action
from agentrl.errors import ConfigError
from agentrl.learner import Learner, LearnerConfig
from agentrl.samples import build_samples
from agentrl.types import Episode, Turn
from tests.conftest import make_tiny, random_samples

# ---- 1. fp32 master weights, bf16 compute -------------------------------------------------------------------


def test_paper_precision_moves_essentially_every_weight_at_lr_1e6():
    """Under the paper configs' precision (bf16 compute, fp32 master weights), a few AdamW steps at lr 1e-6 change
    essentially all weights; the same steps on bf16 parameters would round most updates away (refused below)."""
    cfg = load_config(["experiment=alfworld_paper"])
    assert cfg.model.dtype == "bf16" and cfg.learner.lr == 1e-6
    model, tok = make_tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = Learner(model, LearnerConfig(lr=cfg.learner.lr, mini_batches=1), precision=cfg.model.dtype)
    for _ in range(3):
        learner.update(random_samples(8, len(tok), seed=11), p=1.0)
    # input-embedding rows of tokens absent from the samples get no gradient, so they are left out of the count
    trained = {n: p for n, p in model.named_parameters() if "embed_tokens" not in n}
    total = sum(p.numel() for p in trained.values())
    moved = sum(int((p != before[n]).sum()) for n, p in trained.items())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert moved / total > 0.99, moved / total


def test_adamw_on_bf16_parameters_is_refused():
    model, _ = make_tiny()
    with pytest.raises(ConfigError, match="fp32 weights"):
        Learner(model.to(torch.bfloat16), LearnerConfig())


# ---- 2. the invalid-action penalty is charged to its own row ------------------------------------------------


def _episode(episode_id: int, valid: list[bool], outcome: float = 0.0) -> Episode:
    ep = Episode(episode_id=episode_id, group_id="g", task="t", task_type="pick", instance="i")
    for k, ok in enumerate(valid):
        reward = outcome if k == len(valid) - 1 else 0.0
        ep.turns.append(
            Turn(
                prompt_ids=[1, 2],
                completion_ids=[3],
                completion_text="x",
                action="a",
                valid=ok,
                observation="o",
                reward=reward,
                penalty=0.0 if ok else 0.1,
            )
        )
    return ep


def test_worked_example_per_row_credit():
    """Group of 2 failed episodes × 3 turns, one invalid turn (the second row): row rewards [0, −0.1, 0, 0, 0, 0],
    mean −1/60, unbiased std 0.0408 → advantages [0.41, −2.04, 0.41, 0.41, 0.41, 0.41]."""
    episodes = [_episode(0, [True, False, True]), _episode(1, [True, True, True])]
    samples = build_samples(episodes, "window")
    assert [s.reward for s in samples] == pytest.approx([0.0, -0.1, 0.0, 0.0, 0.0, 0.0])
    assert [round(s.advantage, 2) for s in samples] == [0.41, -2.04, 0.41, 0.41, 0.41, 0.41]


def test_every_row_carries_the_outcome_and_full_mode_the_return():
    episodes = [_episode(0, [False, True], outcome=10.0), _episode(1, [True, True])]
    window = build_samples(episodes, "window")
    assert [s.reward for s in window] == pytest.approx([9.9, 10.0, 0.0, 0.0])
    full = build_samples(episodes, "full")
    assert [s.reward for s in full] == pytest.approx([9.9, 0.0])
    assert grpo_advantages(torch.tensor([9.9, 10.0, 0.0, 0.0]), ["g"] * 4).tolist() == pytest.approx(
        [s.advantage for s in window]
    )


# ---- 3. reply validity: the reference's ALFWorld projection --------------------------------------------------

THINK = "<think>I see a mug.</think>"


def test_valid_reply_is_lower_cased_and_stripped():
    assert project_action(f"{THINK}<action> Take Mug 1 </action>") == ("take mug 1", True)


def test_missing_think_pair_is_invalid():
    assert project_action("<action>look</action>") == ("look", False)
    assert project_action("<think>hm <action>look</action>") == ("look", False)
    assert project_action("<THINK>hm</THINK><action>look</action>") == ("look", False)  # case-sensitive there


def test_cjk_characters_make_a_reply_invalid():
    assert project_action(f"{THINK}<action>look</action> 好") == ("look", False)


def test_missing_action_tag_is_invalid():
    assert project_action(f"{THINK} look") == ("", False)
    assert project_action(f"{THINK}<action>look") == ("", False)


def test_first_tags_win_when_there_are_two():
    assert project_action(f"{THINK}<action>look</action><action>inventory</action>") == ("look", True)
    assert project_action(f"{THINK}<ACTION>go to desk 1</Action>") == ("go to desk 1", True)  # tags: any case
    assert project_action(f"{THINK}</action> then <action>look") == ("", True)  # as the reference slices


def test_lenient_option_is_kept_for_small_models():
    fmt = AgentPromptFormat(reasoning=False, lenient=True)
    assert fmt.parse("I will look around", ["look", "inventory"]) == ("look", True)
    assert AgentPromptFormat().parse("I will look around", ["look"]) == ("", False)


# ---- 4. mini-batches counted in rows ------------------------------------------------------------------------


def test_mini_batch_size_counts_rows():
    model, tok = make_tiny()
    learner = Learner(model, LearnerConfig(mini_batch_size=4, lr=1e-4))
    steps = learner.plan(10)
    assert [len(s) for s in steps] == [4, 4, 2] and sorted(i for s in steps for i in s) == list(range(10))
    metrics = learner.update(random_samples(10, len(tok), seed=3), p=1.0)
    assert metrics["train/optimizer_steps"] == 3.0
    assert Learner(copy.deepcopy(model), LearnerConfig(mini_batches=2)).plan(10) != []
    in_order = Learner(copy.deepcopy(model), LearnerConfig(mini_batch_size=4, epochs=2, shuffle=False)).plan(10)
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2  # verl: batch.split(ppo_mini_batch_size), no shuffle
    assert [len(s) for s in Learner(copy.deepcopy(model), LearnerConfig(mini_batches=2)).plan(10)] == [5, 5]


def _step_gradient(partial: str, rows: int) -> torch.Tensor:
    model, tok = make_tiny()
    cfg = LearnerConfig(mini_batch_size=4, partial_mini_batch=partial, lr=1e-4)
    learner = Learner(model, cfg)
    learner.accumulate_gradients(random_samples(rows, len(tok), seed=5), list(range(rows)), None, None, 1.0)
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_partial_mini_batch_scaled_takes_its_share_of_a_full_step():
    """verl divides every micro-batch's loss by mini_batch_size / micro-batch size, so a last mini-batch of 2 rows
    out of 4 takes half the step of a mean over its own rows; a full mini-batch is the same either way."""
    own, scaled = _step_gradient("rows", 2), _step_gradient("scaled", 2)
    assert torch.allclose(scaled, own * 0.5, rtol=1e-5, atol=1e-9) and own.abs().sum() > 0
    assert torch.allclose(_step_gradient("scaled", 4), _step_gradient("rows", 4), rtol=1e-6, atol=1e-10)


# ---- 5. reference prompts: golden text at turns 1, 2, 3 and 6 -----------------------------------------------

TASK = "put a mug in the sink"
INTRO = "You are in the middle of a room. Looking quickly around you, you see a desk 1.\n\nYour task is to: put a mug in the sink."
ADMISSIBLE = ["go to desk 1", "help", "look"]
INSTRUCTION = (
    "Now it's your turn to take an action.\n"
    "You should first reason step-by-step about the current situation. This reasoning process MUST be enclosed "
    "within <think> </think> tags. \n"
    "Once you've finished your reasoning, you should choose an admissible action for current step and present it "
    "within <action> </action> tags.\n"
)


def _history(n: int) -> list[HistoryItem]:
    return [HistoryItem(INTRO if k == 0 else f"obs {k + 1}", f"act {k + 1}") for k in range(n)]


def _prompt(turn: int) -> str:
    fmt = AgentPromptFormat(environment="the ALFRED Embodied Environment")
    history = _history(turn - 1)
    current = INTRO if turn == 1 else f"obs {turn}"
    (message,) = fmt.render(TASK, history, current, ADMISSIBLE, window=2)
    assert message["role"] == "user"
    return message["content"]


def test_golden_prompt_turn_1():
    assert _prompt(1) == (
        "\nYou are an expert agent operating in the ALFRED Embodied Environment.\n"
        f"Your current observation is: {INTRO}\n"
        "Your admissible actions of the current situation are: ['go to desk 1'\n 'look'].\n\n" + INSTRUCTION
    )


def _later(turn: int, lines: list[str], window: int) -> str:
    return (
        "\nYou are an expert agent operating in the ALFRED Embodied Environment. Your task is to: put a mug in the sink\n"
        f"Prior to this step, you have already taken {turn - 1} step(s). Below are the most recent {window} "
        "observaitons and the corresponding actions you took: " + "\n".join(lines) + "\n"
        f"You are now at step {turn} and your current observation is: obs {turn}\n"
        "Your admissible actions of the current situation are: ['go to desk 1'\n 'look'].\n\n" + INSTRUCTION
    )


def test_golden_prompt_turns_2_3_and_6():
    assert _prompt(2) == _later(2, [f"[Observation 1: '{INTRO}', Action 1: 'act 1']"], 1)
    assert _prompt(3) == _later(
        3, [f"[Observation 1: '{INTRO}', Action 1: 'act 1']", "[Observation 2: 'obs 2', Action 2: 'act 2']"], 2
    )
    # past the window, the step numbers stay absolute (the old prompt said "step 3" here)
    six = _later(6, ["[Observation 4: 'obs 4', Action 4: 'act 4']", "[Observation 5: 'obs 5', Action 5: 'act 5']"], 2)
    assert _prompt(6) == six


def test_math_prompt_is_qwen_math():
    messages = AnswerPromptFormat().render("", [], "What is 1+1?", None, window=0)
    assert messages == [
        {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
        {"role": "user", "content": "What is 1+1?"},
    ]


# ---- 6. entropy bonus ----------------------------------------------------------------------------------------


def test_entropy_bonus_changes_the_gradient_by_the_entropy_gradient():
    model, tok = make_tiny()
    samples = random_samples(4, len(tok), seed=5)
    grads = []
    for coef in (0.0, 0.5):
        m = copy.deepcopy(model)
        learner = Learner(m, LearnerConfig(entropy_coef=coef, mini_batches=1))
        loss, metrics, _ = learner.accumulate_gradients(samples, list(range(4)), None, None, p=1.0)
        grads.append((loss, metrics["entropy"], [p.grad.clone() for p in m.parameters()]))
    (l0, e0, g0), (l1, e1, g1) = grads
    assert e0 == pytest.approx(e1) and e0 > 0
    assert l1 == pytest.approx(l0 - 0.5 * e0, rel=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(g0, g1))


# ---- 7. p schedule endpoints ---------------------------------------------------------------------------------


def test_p_reaches_p_end_exactly_at_the_last_iteration():
    algo = load_config(["experiment=alfworld_paper"]).algo
    assert algo.p_at(0, 150) == pytest.approx(1.0 - 2.0 / 150)  # verl's first global step is 1
    assert algo.p_at(149, 150) == -1.0
    assert AlgoConfig(p_schedule_steps=10).p_at(50, 150) == -1.0  # a shorter schedule holds p_end


# ---- 8, 9 and the protocol tables: the paper configs, pinned ------------------------------------------------

ALFWORLD = {
    "model.name": "Qwen/Qwen2.5-1.5B-Instruct",
    "model.dtype": "bf16",
    "rollout.tasks_per_iteration": 16,
    "rollout.group_size": 8,
    "rollout.max_turns": 50,
    "rollout.history_length": 2,
    "rollout.max_prompt_tokens": 2048,
    "rollout.max_new_tokens": 512,
    "rollout.invalid_penalty": 0.1,
    "exploration.temperature": 1.0,
    "rollout.eval_temperature": 0.4,
    "rollout.sample_mode": "window",
    "rollout.length_limited_is_invalid": False,
    "algo.loss": "holder_seq",
    "algo.p_schedule": "linear",
    "algo.p_start": 1.0,
    "algo.p_end": -1.0,
    "algo.p_schedule_steps": 150,
    "algo.clip_low": 0.2,
    "algo.clip_high": 0.2,
    "algo.advantage.statistics": "rows",
    "algo.advantage.std_normalize": True,
    "learner.lr": 1e-6,
    "learner.mini_batch_size": 256,
    "learner.epochs": 1,
    "learner.weight_decay": 0.01,
    "learner.shuffle": False,
    "learner.partial_mini_batch": "scaled",
    "learner.kl_coef": 0.01,
    "learner.entropy_coef": 0.001,
    "trainer.iterations": 150,
    "trainer.eval_every": 5,
    "trainer.eval_before": True,
    "env.eval_instances": 128,
    "env.prompt.reasoning": None,  # the format's default: <think> reasoning, then <action>
    "env.prompt.lenient": None,
}
MATH = {
    "model.name": "Qwen/Qwen2.5-Math-7B",
    "model.dtype": "bf16",
    "env.id": "agentrl/Math-v0",
    "env.kwargs.fallbacks": [],
    "rollout.group_size": 8,
    "rollout.tasks_per_iteration": 128,
    "rollout.max_new_tokens": 3000,
    "rollout.max_prompt_tokens": 1024,
    "exploration.temperature": 1.0,
    "rollout.eval_temperature": 0.0,
    "rollout.eval_max_new_tokens": 4096,
    "rollout.length_limited_scores_zero": True,
    "rollout.invalid_penalty": 0.0,
    "algo.loss": "holder_seq",
    "algo.p_start": 2.0,
    "algo.p_end": -2.0,
    "algo.p_schedule": "linear",
    "algo.p_schedule_steps": 500,
    "algo.clip_low": 0.2,
    "learner.lr": 1e-6,
    "learner.mini_batch_size": 128,
    "learner.epochs": 1,
    "learner.kl_coef": 0.0,
    "learner.entropy_coef": 0.0,
    "trainer.iterations": 500,
    "trainer.eval_every": 16,
}


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part)  # a dict's absent key: unset
    return value


@pytest.mark.parametrize("experiment, table", [("alfworld_paper", ALFWORLD), ("math_paper", MATH)])
def test_paper_configs_match_the_protocol_tables(experiment, table):
    cfg = load_config([f"experiment={experiment}"])
    validate_config(cfg, resources=False)  # the paper's model and data are not on this machine
    assert {k: _get(cfg, k) for k in table} == table


def test_alfworld_paper_evaluates_valid_seen_and_valid_unseen():
    cfg = load_config(["experiment=alfworld_paper"])
    assert [(s.name, s.kwargs) for s in cfg.env.eval_sets] == [
        ("valid_seen", {"split": "valid_seen"}),
        ("valid_unseen", {"split": "valid_unseen"}),
    ]


def test_protocols_doc_lists_every_pinned_setting():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOLS.md").read_text()
    missing = [k for k in [*ALFWORLD, *MATH] if f"`{k}`" not in doc]
    assert not missing, missing


def test_math_paper_evaluates_with_4096_new_tokens_and_trains_with_3000():
    cfg = load_config(["experiment=math_paper"])
    assert cfg.rollout.sampling(0).max_new_tokens == 3000
    assert cfg.rollout.sampling(0, evaluation=True).max_new_tokens == 4096  # scripts/eval.sh --max_tokens 4096
    assert cfg.rollout.longest_sequence == 1024 + 4096  # the sampler's context holds the longer evaluation reply
    quick = load_config(["experiment=quickstart"])
    assert quick.rollout.sampling(0, evaluation=True).max_new_tokens == quick.rollout.max_new_tokens  # unset: same
    bad = copy.deepcopy(quick)
    bad.rollout.eval_max_new_tokens = 0
    assert any("eval_max_new_tokens must be >= 1" in p for p in bad.rollout.validate())
