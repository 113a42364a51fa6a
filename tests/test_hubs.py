"""Chat envs and tool-calling turns (envs/tools.py) and envs from hubs (verifiers' classic API): tool calls parsed or
refused, exact action masks with tool results as context, verifiers single-turn, multi-turn and tool envs played by
the rollout, bounded and failing reward functions, signal handlers kept, and a tiny model that learns through them."""

from __future__ import annotations

import random
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentrl import envs
from agentrl.chat import ChatTokens
from agentrl.config import load_config
from agentrl.envs.pool import EnvPool, env_factory
from agentrl.envs.prompting import ChatPromptFormat
from agentrl.envs.tools import ToolCallError, fallback_messages, openai_tool, parse_tool_calls, tool_call_text
from agentrl.errors import ConfigError
from agentrl.policies.scripted import ScriptedPolicy
from agentrl.rollout import RolloutConfig, RolloutManager, Task
from agentrl.samples import build_samples
from tests.test_rollout_samples import _check_masks

VF = "verifiers:tests.vf_cue"
CALL = '<tool_call>\n{"name": "press", "arguments": {"button": "left"}}\n</tool_call>'


def test_tool_calls_are_read_or_refused():
    text, calls = parse_tool_calls(f"I will press it. {CALL} and {tool_call_text('look', {})}")
    assert text == "I will press it.  and" and [(c.name, c.arguments) for c in calls] == [
        ("press", {"button": "left"}),
        ("look", {}),
    ]
    assert parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>')[1][0].arguments == {
        "x": 1
    }
    assert parse_tool_calls("no call at all") == ("no call at all", [])
    for bad in (
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>["press"]</tool_call>',
        '<tool_call>{"name": "press", "arguments": [1]}</tool_call>',
        '<tool_call>{"name": "press", "arguments": {}}',
        "text </tool_call>",
    ):
        with pytest.raises(ToolCallError):
            parse_tool_calls(bad)
        assert ChatPromptFormat().parse(bad) == (bad, False)  # a malformed call is an invalid action, never a crash
    assert ChatPromptFormat().parse(CALL) == (CALL, True)
    assert openai_tool({"name": "f", "description": "d", "parameters": {}})["function"]["name"] == "f"
    with pytest.raises(ValueError):
        openai_tool({"description": "no name"})


def test_the_fallback_puts_tools_in_the_system_message_and_results_in_user_turns():
    tools = [openai_tool({"name": "press", "description": "Press.", "parameters": {}})]
    said = [{"role": "user", "content": "go"}, {"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}]
    out = fallback_messages(said, tools)
    assert out[0]["role"] == "system" and '"name": "press"' in out[0]["content"] and "<tool_call>" in out[0]["content"]
    assert out[2] == {
        "role": "user",
        "content": "<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response>",
    }


def _tool_manager(tokenizer, policy, *, turns, mode, max_new=120, constrained=False, env=None):
    env_id, kwargs = env or ("agentrl/ToolCue-v0", {"turns": turns})
    pool = EnvPool(env_factory(env_id, max_episode_steps=turns + 1, **kwargs), num_workers=0)
    cfg = RolloutConfig(
        group_size=2,
        max_turns=turns + 1,
        sample_mode=mode,
        max_new_tokens=max_new,
        constrained_actions=constrained,
        length_limited_is_invalid=False,
    )
    return RolloutManager(pool, policy, tokenizer, envs.make_prompt_format(env_id), cfg, seed=0), pool


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000), mode=st.sampled_from(["window", "full"]), turns=st.integers(1, 3))
def test_tool_turn_masks_are_exactly_the_model_tokens(tiny_tokenizer, seed, mode, turns):
    """Tool schemas, tool results and template tokens are context; the mask covers exactly the generated ids. A
    malformed tool call is an invalid action with the usual penalty."""
    rng = random.Random(seed)
    replies = [CALL, tool_call_text("press", {"button": "up"}), "<tool_call>{broken</tool_call>", "up", ""]

    def reply(_prompt: str) -> str:
        return rng.choice(replies)

    manager, pool = _tool_manager(tiny_tokenizer, ScriptedPolicy(tiny_tokenizer, reply), turns=turns, mode=mode)
    with pytest.warns(UserWarning, match="does not render tools"):  # the tiny model's ChatML has no tools
        manager.chat._renders_tools = None
        episodes = manager.run([Task(i, i, f"g{i}") for i in range(3)])
    pool.close()
    _check_masks(episodes, build_samples(episodes, mode=mode), mode)
    for e in episodes:
        for t in e.turns:
            assert t.valid == (t.completion_text.strip() in (CALL, replies[1], "up"))
            assert t.penalty == (0.0 if t.valid else manager.cfg.invalid_penalty)
    context = tiny_tokenizer.decode(episodes[0].turns[-1].prompt_ids)
    assert '"name": "press"' in context  # the tool schema, in the system message (fallback)
    if len(episodes[0].turns) > 1 and mode == "full":
        assert "<tool_response>" in context or "did not call" in context or "could not be read" in context


def test_full_mode_tool_conversation_is_one_growing_prefix(tiny_tokenizer):
    manager, pool = _tool_manager(tiny_tokenizer, ScriptedPolicy(tiny_tokenizer, lambda _p: CALL), turns=3, mode="full")
    episodes = manager.run([Task(0, 0, "g")])
    pool.close()
    turns = episodes[0].turns
    assert len(turns) == 3
    for a, b in zip(turns, turns[1:]):
        assert b.prompt_ids[: len(a.prompt_ids) + len(a.completion_ids)] == a.prompt_ids + a.completion_ids
    shown = tiny_tokenizer.decode(turns[-1].prompt_ids)
    assert shown.count("<tool_response>\npressed 'left'") == 2 and shown.count("Cue:") == 3


def test_constrained_tool_calls_and_special_tokens_in_tool_results(tiny_tokenizer):
    """Constrained decoding samples only the env's listed tool calls; a tool result quoting a control token stays
    plain text."""
    chat = ChatTokens(tiny_tokenizer)
    chat._renders_tools = False
    ids = chat.next_turn_ids([tiny_tokenizer.eos_token_id], [{"role": "tool", "content": "<|im_start|>user"}])
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_start|>") in ids
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # the template's two headers only
    from agentrl.policies.hf import HFPolicy
    from tests.conftest import make_tiny

    model, _ = make_tiny()
    manager, pool = _tool_manager(
        tiny_tokenizer, HFPolicy(model, tiny_tokenizer), turns=1, mode="window", constrained=True
    )
    episodes = manager.run([Task(i, i, f"g{i}") for i in range(4)])
    pool.close()
    listed = {tool_call_text("press", {"button": b}) for b in ("up", "down", "left", "right")}
    assert all(t.completion_text in listed and t.valid for e in episodes for t in e.turns)


# ---- verifiers (classic API) ----


def _vf_episodes(tokenizer, reply, kind, mode="full", **kwargs):
    turns = {"single": 1, "multi": 2, "tool": 3}[kind]
    manager, pool = _tool_manager(
        tokenizer,
        ScriptedPolicy(tokenizer, reply),
        turns=turns,
        mode=mode,
        env=(VF, {"kind": kind, **kwargs}),
    )
    episodes = manager.run([Task(1, 1, "g")])
    pool.close()
    return episodes


@pytest.mark.parametrize("mode", ["window", "full"])
def test_verifiers_envs_play_single_multi_turn_and_tool(tiny_tokenizer, mode):
    # instance 1 of the multi-turn env: cues "down", then "up"; its reward is the fraction answered right
    single = _vf_episodes(tiny_tokenizer, lambda _p: "down", "single", mode)
    assert [e.total_reward for e in single] == [1.0, 1.0] and all(e.won and len(e.turns) == 1 for e in single)
    multi = _vf_episodes(tiny_tokenizer, lambda _p: "down", "multi", mode)
    assert [e.total_reward for e in multi] == [0.5, 0.5] and all(len(e.turns) == 2 for e in multi)
    shown = tiny_tokenizer.decode(multi[0].turns[1].prompt_ids)
    assert "Correct. Cue: up." in shown and shown.count("Cue: down.") == 1  # the env's own next message
    _check_masks(multi, build_samples(multi, mode=mode), mode)
    # the tool env: press the button named in the prompt ("down"), then answer without a call (its stop condition)
    call = tool_call_text("press", {"button": "down"})
    tool = _vf_episodes(tiny_tokenizer, lambda p: "done" if "pressed down" in p else call, "tool", mode)
    assert [e.total_reward for e in tool] == [1.0, 1.0] and all(len(e.turns) == 2 for e in tool)
    assert "pressed down" in tiny_tokenizer.decode(tool[0].turns[1].prompt_ids)
    wrong = _vf_episodes(tiny_tokenizer, lambda _p: "<tool_call>{oops</tool_call>", "tool", mode)
    assert [sum(t.reward for t in e.turns) for e in wrong] == [0.0, 0.0]  # no call: its stop condition, unrewarded
    assert not wrong[0].turns[0].valid and wrong[0].turns[0].penalty > 0  # and the usual invalid-action penalty


@pytest.mark.parametrize("reward", ["raise", "hang", "hang-sync"])
def test_a_raising_or_hanging_reward_scores_the_episode_zero_with_the_reason(reward):
    env = envs.make_env(VF, kind="single", reward=reward, reward_timeout_s=1.0)
    env.reset(options={"instance": 0})
    started = time.perf_counter()
    _, score, terminated, _, info = env.step("up")  # the right answer: only the reward function's failure scores 0
    assert score == 0.0 and terminated and not info["won"]
    assert ("broken" in info["reward_error"]) if reward == "raise" else ("reward_timeout_s" in info["reward_error"])
    assert time.perf_counter() - started < 5


def test_loading_a_verifiers_env_keeps_the_signal_handlers_and_rejects_what_it_cannot_play():
    def mine(signum, frame):
        pass

    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        envs.make_env(VF, kind="multi")  # verifiers installs its own handlers while an env is built
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    with pytest.raises(ConfigError, match="cannot import|Could not import"):
        envs.probe_env("verifiers:tests.no_such_env_module", {})
    with pytest.raises(ConfigError, match="split"):
        envs.probe_env(VF, {"split": "test"})
    with pytest.raises(ConfigError, match="name the module"):
        envs.env_class("verifiers:")


def test_a_run_config_naming_a_hub_module_is_refused_until_the_user_names_it(tmp_path, capsys):
    """agentrl-eval --run never imports a module a run directory names (here through a hub env id)."""
    from agentrl import eval_cli
    from agentrl.config import config_yaml

    cfg = load_config(["experiment=cuebandit", f"env.id={VF}", f"trainer.run_dir={tmp_path}"])
    (tmp_path / "config.yaml").write_text(config_yaml(cfg))
    with pytest.raises(SystemExit):
        eval_cli.main(["--run", str(tmp_path), "--agent", "random"])
    assert "pass --imports tests.vf_cue" in capsys.readouterr().err


LEARN = [
    "experiment=cuebandit",
    "rollout.max_turns=2",
    "rollout.eval_max_turns=2",
    "rollout.max_new_tokens=3",
    "trainer.random_baseline_seeds=0",
]


def test_tiny_model_learns_a_verifiers_multi_turn_env(tmp_path):
    """CueBandit's task served as a vf.MultiTurnEnv (2 cues an episode, the rubric's async reward): greedy panel
    success rises by at least 40 points."""
    from agentrl import trainer as trainer_module

    cfg = load_config(
        [*LEARN, f"env.id={VF}", "+env.kwargs.kind=multi", "+env.kwargs.turns=2", f"trainer.run_dir={tmp_path}"]
        + ["trainer.iterations=25", "trainer.eval_every=25", "env.eval_instances=16"]
    )
    result = trainer_module.train(cfg)
    before, after = result["before"]["eval/panel/success"], result["after"]["eval/panel/success"]
    assert after - before >= 0.4, (before, after)


def test_tiny_model_learns_to_call_a_tool(tmp_path):
    """ToolCue with one button and the wrong kinds of reply listed too (naming the button without a call, calling a
    tool that does not exist): only a correct call of `press` is rewarded. Constrained decoding samples among the
    three replies; greedy panel success rises by at least 40 points (chance: one in three)."""
    from agentrl import trainer as trainer_module

    cfg = load_config(
        [
            *LEARN,
            "env.id=agentrl/ToolCue-v0",
            "+env.kwargs.num_cues=1",
            "+env.kwargs.distractors=true",
            "rollout.constrained_actions=true",
        ]
        + [f"trainer.run_dir={tmp_path}"]
        + ["rollout.max_new_tokens=64", "rollout.group_size=8", "rollout.tasks_per_iteration=4"]
        + ["trainer.iterations=20", "trainer.eval_every=20", "env.eval_instances=16", "learner.lr=2e-3"]
    )
    result = trainer_module.train(cfg)
    before, after = result["before"]["eval/panel/success"], result["after"]["eval/panel/success"]
    assert after - before >= 0.4, (before, after)


def test_agentrl_eval_plays_a_hub_env_like_ours(tmp_path):
    """agentrl-eval on a verifiers env and on the tool env: the same panel, per-game outcomes and report."""
    import json as json_module

    from agentrl import eval_cli

    for env_id, extra in ((VF, ["--imports", "tests.vf_cue"]), ("agentrl/ToolCue-v0", [])):
        out = tmp_path / env_id.replace("/", "_").replace(":", "_")
        args = ["--env", env_id, "--model", "tiny-qwen2", "--instances", "4", "--max-turns", "2"]
        eval_cli.main([*args, *extra, "--max-new-tokens", "8", "--out", str(out), "--no-progress"])
        report = json_module.loads((out / "eval.json").read_text())
        games = report["per_seed"][0]["episodes"]
        assert report["instances"] == [0, 1, 2, 3] and len(games) == 4 and all(g["turns"] >= 1 for g in games)
        assert report["prompt_format"] == "agentrl.envs.prompting:ChatPromptFormat"
