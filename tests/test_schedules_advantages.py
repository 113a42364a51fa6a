from __future__ import annotations

import math

import pytest
import torch

from agentrl.advantages import grpo_advantages
from agentrl.errors import ConfigError
from agentrl.schedules import SCHEDULE_SHAPES, PController, p_schedule


@pytest.mark.parametrize(
    "shape, mid",
    [
        ("constant", 2.0),  # stays at p_start
        ("linear", 0.0),  # 2 + (−4)·0.5
        ("cosine", 0.0),  # f(0.5) = (1 − cos(π/2))/2 = 0.5
        ("power", 1.0),  # f(0.5) = 0.25 → 2 − 1
        ("cubic", 0.0),  # f(0.5) = (1 + 0)/2
    ],
)
def test_schedule_start_middle_end(shape, mid):
    assert p_schedule(shape, 0, 10, 2.0, -2.0) == pytest.approx(2.0)
    assert p_schedule(shape, 5, 10, 2.0, -2.0) == pytest.approx(mid)
    end = 2.0 if shape == "constant" else -2.0
    assert p_schedule(shape, 10, 10, 2.0, -2.0) == pytest.approx(end)
    assert p_schedule(shape, 99, 10, 2.0, -2.0) == pytest.approx(end)  # progress clamped


def test_schedule_quarter_points():
    assert p_schedule("cosine", 1, 4, 1.0, -1.0) == pytest.approx(1 - 2 * (1 - math.cos(math.pi / 4)) / 2)
    assert p_schedule("cubic", 1, 4, 0.0, 1.0) == pytest.approx((1 + (-0.5) ** 3) / 2)
    assert p_schedule("power", 1, 4, 0.0, 1.0, power=3) == pytest.approx(0.25**3)
    assert set(SCHEDULE_SHAPES) == {"constant", "linear", "cosine", "power", "cubic"}


def test_schedule_rejects_bad_input():
    with pytest.raises(ConfigError, match="did you mean 'linear'"):
        p_schedule("linear_dec", 0, 10, 1, -1)
    with pytest.raises(ConfigError, match="total_steps"):
        p_schedule("linear", 0, 0, 1, -1)
    with pytest.raises(ConfigError, match="finite"):
        p_schedule("linear", 0, 10, float("inf"), -1)


def _controller(rule: str, **kw) -> PController:
    settings = {"p_start": 1.0, "low": -1.0, "high": 1.0, "max_step": 0.25, **kw}
    return PController(rule, **settings)


def _drive(control: PController, name: str, values: list[float]) -> list[float]:
    """p after each of a run of updates whose metric `name` took `values`."""
    return [control.observe({name: v})["p_control/next_p"] for v in values]


def test_ess_rule_lowers_p_while_the_weights_stay_spread_and_raises_it_when_they_concentrate():
    control = _controller("ess", ess_target=0.9, ess_gain=2.0)
    tame = _drive(control, "train/weight_ess_frac", [1.0] * 12)  # ESS above the target: −0.2 per update
    assert tame[:3] == pytest.approx([0.8, 0.6, 0.4]) and tame[-1] == -1.0  # down to the range's low end, not past
    assert all(b <= a for a, b in zip(tame, tame[1:]))
    concentrated = _drive(control, "train/weight_ess_frac", [0.3] * 12)  # far below: rate-limited climb
    assert concentrated[:2] == pytest.approx([-0.75, -0.5]) and concentrated[-1] == 1.0
    held = _controller("ess").observe({"train/weight_ess_frac": 0.9})
    assert held["p_control/next_p"] == 1.0 and held["p_control/target_p"] == pytest.approx(1.0)  # on target


def test_dispersion_rule_moves_p_toward_high_as_log_ratios_spread():
    control = _controller("dispersion", p_start=0.0, dispersion_scale=0.2)
    assert _drive(control, "train/log_ratio_std", [0.0, 0.0]) == pytest.approx([-0.25, -0.5])  # tame: toward low
    assert control.target(0.1) == pytest.approx(0.0) and control.target(0.4) == 1.0  # halfway; saturates at high
    assert _drive(control, "train/log_ratio_std", [1.0] * 8)[-1] == 1.0  # spread: climbs by 0.25 to high
    monotone = [_controller("dispersion").target(s) for s in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)]
    assert monotone == sorted(monotone) and monotone[0] == -1.0


def test_kl_rule_raises_p_after_an_update_that_went_far_and_lowers_it_after_a_tame_one():
    control = _controller("kl", kl_target=0.02, kl_gain=0.2)
    assert _drive(control, "train/ppo_kl", [0.0, 0.0, 0.01]) == pytest.approx([0.8, 0.6, 0.5])  # tame: −0.2, −0.1
    assert _drive(control, "train/ppo_kl", [0.03, 1.09]) == pytest.approx([0.6, 0.85])  # far: +0.1, then capped
    assert _drive(control, "train/ppo_kl", [0.02]) == pytest.approx([0.85])  # on target: p stays


@pytest.mark.parametrize("rule", ["ess", "dispersion", "kl"])
def test_controller_bounds_rate_limit_and_missing_inputs_hold(rule):
    name = PController.INPUTS[rule]
    control = _controller(rule, p_start=5.0, low=-2.0, high=0.5, max_step=0.1)
    assert control.p(0) == 0.5  # p_start clamped into the range
    values = [0.0, 1.0, 0.5, 10.0, 0.0, 0.95, 3.0, 0.2] * 5
    trace = [0.5, *_drive(control, name, values)]
    assert all(-2.0 <= p <= 0.5 for p in trace)
    assert all(abs(b - a) <= 0.1 + 1e-12 for a, b in zip(trace, trace[1:]))
    before = control.p(0)
    for row in ({}, {name: float("nan")}, {name: float("inf")}, {name: "0.5"}):  # a skipped or broken update
        assert control.observe(row)["p_control/next_p"] == before and math.isnan(
            control.observe(row)["p_control/input"]
        )
    resumed = _controller(rule, p_start=5.0, low=-2.0, high=0.5, max_step=0.1)
    resumed.load_state_dict(control.state_dict())  # a checkpoint's state continues the same sequence
    assert _drive(resumed, name, values) == _drive(control, name, values)
    with pytest.raises(ConfigError, match="no state of the adaptive p controller"):
        resumed.load_state_dict({})
    with pytest.raises(ConfigError, match="no state of the adaptive p controller"):
        resumed.load_state_dict({"rule": "ess" if rule != "ess" else "dispersion", "p": 0.0})


def test_adaptive_settings_are_checked_before_weights_load():
    from agentrl.config import load_config, validate_config

    def problems(*overrides: str) -> str:
        with pytest.raises(ConfigError) as err:
            validate_config(load_config(["experiment=cuebandit", "algo.p_schedule=adaptive", *overrides]))
        return str(err.value)

    validate_config(load_config(["experiment=cuebandit", "algo.p_schedule=adaptive"]))  # the defaults are valid
    text = problems("algo.adaptive.max_step=0", "algo.adaptive.ess_target=1.5", "algo.adaptive.p_min=2")
    assert "max_step must be a finite number > 0" in text and "ess_target must be in (0, 1]" in text
    assert "low < high" in text and "algo.adaptive" in text
    assert "does not report" in problems("algo.loss=gspo")  # the ess rule reads the Hölder weights' ESS
    validate_config(
        load_config(
            ["experiment=cuebandit", "algo.p_schedule=adaptive", "algo.loss=gspo", "algo.adaptive.rule=dispersion"]
        )
    )
    with pytest.raises(ConfigError, match="rule"):
        load_config(["experiment=cuebandit", "algo.adaptive.rule=variance"])


def test_grpo_advantages_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 5.0, 5.0, 3.0])
    groups = ["a", "a", "a", "b", "b", "c"]
    adv = grpo_advantages(rewards, groups)
    # group a: mean 2/3, unbiased std = √(1/3) → (1 − 2/3)/0.57735 = 0.57735, (0 − 2/3)/0.57735 = −1.1547
    assert adv[:3].tolist() == pytest.approx([0.57735, -1.1547, 0.57735], rel=1e-4)
    assert adv[3:5].tolist() == [0.0, 0.0]  # equal rewards
    assert adv[5].item() == 0.0  # a group of one
    no_std = grpo_advantages(rewards, groups, std_normalize=False)
    assert no_std[:3].tolist() == pytest.approx([1 / 3, -2 / 3, 1 / 3])


def test_grpo_advantages_episode_statistics():
    # window mode: episode 0 (reward 1) has 3 step-rows, episode 1 (reward 0) has 1 row.
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0])
    groups = ["g"] * 4
    by_rows = grpo_advantages(rewards, groups, std_normalize=False)
    by_episodes = grpo_advantages(rewards, groups, std_normalize=False, episode_ids=[0, 0, 0, 1])
    assert by_rows.tolist() == pytest.approx([0.25, 0.25, 0.25, -0.75])  # row mean 0.75
    assert by_episodes.tolist() == pytest.approx([0.5, 0.5, 0.5, -0.5])  # episode mean 0.5


def test_filter_groups_leaves_out_only_groups_without_signal():
    """algo.advantage.filter_groups: a group whose rows all have advantage 0 (every episode scored the same) goes;
    a group with any signal stays whole, in order — a per-turn invalid penalty is signal too."""
    from agentrl.samples import informative
    from agentrl.types import Sample

    rewards = {"won-lost": [10.0, 0.0], "all-lost": [0.0, 0.0], "all-won": [10.0, 10.0], "penalised": [0.0, -0.1]}
    samples = [
        Sample([1, 2, 3], [0, 1, 1], reward=r, group_id=g, episode_id=k)
        for g, rs in rewards.items()
        for k, r in enumerate(rs)
    ]
    for s, a in zip(samples, grpo_advantages(torch.tensor([s.reward for s in samples]), [s.group_id for s in samples])):
        s.advantage = float(a)
    kept = informative(samples)
    assert [s.group_id for s in kept] == ["won-lost", "won-lost", "penalised", "penalised"]
    assert informative([s for s in samples if s.group_id == "all-lost"]) == []


def test_step_credit_compares_turns_that_saw_the_same_prompt():
    """algo.advantage.step_weight with step_credit=prompt: each window row adds ω × its discounted return scored against the turns
    of its group that saw the identical prompt; a turn alone in its state adds nothing, and groups never mix."""
    from agentrl.advantages import discounted_returns
    from agentrl.algo import AdvantageConfig
    from agentrl.samples import build_samples, shared_state_fraction
    from agentrl.types import Episode, Turn

    def episode(k: int, group: str, prompts: list[list[int]], win: bool) -> Episode:
        turns = [
            Turn(prompt_ids=p, completion_ids=[9], completion_text="a", action="a", valid=True, observation="o")
            for p in prompts
        ]
        turns[-1].reward = 10.0 if win else 0.0
        turns[0].penalty = 0.5 if k == 2 else 0.0  # penalties count in the step return, as in the episode's
        return Episode(episode_id=k, group_id=group, task="t", task_type="x", instance="i", turns=turns)

    assert discounted_returns([1.0, 0.0, 10.0], 0.5) == pytest.approx([1 + 0.25 * 10, 5.0, 10.0])
    episodes = [
        episode(0, "g", [[1], [2], [3]], win=True),  # from state [1]: wins in 3 turns
        episode(1, "g", [[1], [2]], win=True),  # from state [1]: wins in 2 — better; state [2]: wins next turn
        episode(2, "g", [[1], [4], [5]], win=False),
        episode(3, "h", [[1], [2]], win=False),  # another group: prompt [1] there is another state
    ]
    gamma, weight = 0.9, 2.0
    plain = build_samples(episodes, "window", AdvantageConfig(std_normalize=False))
    stepped = build_samples(
        episodes,
        "window",
        AdvantageConfig(std_normalize=False, step_weight=weight, step_gamma=gamma, step_credit="prompt"),
    )
    step = [b.advantage - a.advantage for a, b in zip(plain, stepped)]
    g_first = [10 * gamma**2, 10 * gamma, -0.5]  # returns from prompt [1] in group g
    g_second = [10 * gamma, 10.0]  # from prompt [2]: episode 0's turn 1 and episode 1's turn 1
    mean1, mean2 = sum(g_first) / 3, sum(g_second) / 2
    assert step == pytest.approx(
        [
            weight * (g_first[0] - mean1),
            weight * (g_second[0] - mean2),
            0.0,
            weight * (g_first[1] - mean1),
            weight * (g_second[1] - mean2),
            weight * (g_first[2] - mean1),
            0.0,
            0.0,
            0.0,
            0.0,
        ]
    )
    assert step[3] > step[0] > 0 > step[5]  # the faster win from the same state is credited more
    assert shared_state_fraction(episodes) == pytest.approx(5 / 10)  # [1] three times and [2] twice in g
    # off by default: the paper's episode-level credit
    assert [s.advantage for s in build_samples(episodes, "window")] == [
        s.advantage for s in build_samples(episodes, "window", AdvantageConfig(step_weight=0.0))
    ]


def test_gigpo_step_credit_groups_by_observation_and_charges_penalties_to_their_own_turn():
    """step_credit=gigpo (verl-agent's GiGPO): turns of a group with the same observation text share a step group,
    whatever else their prompts hold; the step return is the discounted env reward, minus the turn's own invalid
    penalty only (verl-agent subtracts it from that row's step reward after discounting)."""
    from agentrl.algo import AdvantageConfig
    from agentrl.samples import build_samples, shared_state_fraction
    from agentrl.types import Episode, Turn

    def episode(k: int, observations: list[str], rewards: list[float], penalties: list[float]) -> Episode:
        turns = [
            Turn(prompt_ids=[k, i], completion_ids=[9], completion_text="a", action="a", valid=True, observation=o)
            for i, o in enumerate(observations)
        ]
        for t, r, pen in zip(turns, rewards, penalties):
            t.reward, t.penalty = r, pen
        return Episode(episode_id=k, group_id="g", task="t", task_type="x", instance="i", turns=turns)

    gamma = 0.5
    episodes = [
        episode(0, ["start", "shelf", "done"], [0.0, 0.0, 10.0], [0.0, 0.0, 0.0]),
        episode(1, ["start", "shelf"], [0.0, 0.0], [0.0, 1.0]),  # invalid at its second turn
    ]
    cfg = AdvantageConfig(std_normalize=False, step_weight=1.0, step_gamma=gamma, step_credit="gigpo")
    plain = build_samples(episodes, "window", AdvantageConfig(std_normalize=False))
    stepped = build_samples(episodes, "window", cfg)
    step = [b.advantage - a.advantage for a, b in zip(plain, stepped)]
    # returns: episode 0: [2.5, 5, 10]; episode 1: [0, 0 − 1] (the penalty not carried back to "start")
    start, shelf = (2.5 + 0.0) / 2, (5.0 - 1.0) / 2
    assert step == pytest.approx([2.5 - start, 5.0 - shelf, 0.0, 0.0 - start, -1.0 - shelf])
    # the prompt-anchored variant sees no shared state here (every prompt differs) and carries the penalty back
    prompt_cfg = AdvantageConfig(std_normalize=False, step_weight=1.0, step_gamma=gamma, step_credit="prompt")
    assert [s.advantage for s in build_samples(episodes, "window", prompt_cfg)] == [s.advantage for s in plain]
    assert shared_state_fraction(episodes, "gigpo") == pytest.approx(4 / 5)
    assert shared_state_fraction(episodes, "prompt") == 0.0
