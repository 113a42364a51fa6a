"""The `algo` config group: which policy loss, its options, the p schedule and the advantage estimator.

    agentrl-train algo=grpo                       # a preset from configs/algo/
    agentrl-train algo.loss=holder_token algo.p_end=-2 algo.advantage.statistics=episodes

Every option is checked against the loss itself before any weights load (`AlgoConfig.validate`): the loss is called
once on a one-token batch with the configured options, so a misspelt option or a bad value is rejected by the code
that owns it, not by a second list of rules kept elsewhere.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.errors import ConfigError, unknown_name_message
from agentrl.losses import LEARNER_PASSED_OPTIONS, POLICY_LOSSES, passed_options
from agentrl.schedules import FixedSchedule, PController
from agentrl.types import Choice, option


class AdvantageStatistics(Choice):
    rows = "rows"  # mean and std over all step-rows of a group (verl-agent's default)
    episodes = "episodes"  # over episodes only, one value each


class AggregateOver(Choice):
    """The tokens a sequence-level loss (holder_seq, holder_token, gspo, gmpo) aggregates each reply over."""

    generated = "generated"  # every agent-generated token (the reference's response mask)
    chosen = "chosen"  # under constrained decoding, only tokens with ≥ 2 allowed continuations (forced ones left out)


class StepCredit(Choice):
    """How step-level credit (AdvantageConfig.step_weight > 0) groups turns and what it compares."""

    # GiGPO (Feng et al. 2025, verl-agent gigpo/core_gigpo.py): turns of a group whose current observation text is
    # the same; the return is the discounted env reward from that turn on, minus the turn's own invalid penalty
    gigpo = "gigpo"
    # turns of a group that saw the identical prompt ids (observation, the quoted history and the admissible
    # actions: the same input to the policy); the return is discounted over (reward − penalty) of every later turn
    prompt = "prompt"


@dataclass
class AdvantageConfig:
    """GRPO-family group statistics (PAPER.md §2)."""

    std_normalize: bool = option(True, "divide by the group's reward std (false: Dr.GRPO)")
    eps: float = option(1e-6, "added to the group std before dividing")
    statistics: AdvantageStatistics = option(AdvantageStatistics.rows, "group statistics over rows or episodes")
    # DAPO's dynamic sampling without the resampling: the rows of a group whose advantages are all 0 (every episode
    # scored the same) carry no policy gradient, only compute, and no longer dilute the loss's mean over rows
    filter_groups: bool = option(False, "leave out groups whose advantages are all 0 (DAPO's dynamic sampling)")
    # step-level credit, window samples only: each row's advantage adds step_weight x (its discounted return from
    # that turn, gamma = step_gamma, scored against those of the group's turns in the same state: `step_credit`
    # says which turns share a state). 0 = episode-level credit only (the paper's protocol); GiGPO uses 1 and 0.95
    step_weight: float = option(0.0, "step-level credit weight (0: episode credit only; GiGPO: 1)")
    step_gamma: float = option(0.95, "discount of the step-level returns")
    step_credit: StepCredit = option(
        StepCredit.gigpo, "same state = gigpo: same observation text | prompt: same prompt ids"
    )


class PSchedule(Choice):
    """The shape of the Hölder order over training (agentrl/schedules.py), or the adaptive controller."""

    constant = "constant"
    linear = "linear"  # the paper's: p_start -> p_end evenly
    cosine = "cosine"
    power = "power"  # x ** p_power
    cubic = "cubic"
    adaptive = "adaptive"  # p for the next update from the current one's statistics (algo.adaptive)


class AdaptiveRule(Choice):
    """What the adaptive p controller (algo.p_schedule=adaptive) reads from each update (agentrl/schedules.py)."""

    ess = "ess"  # keep the Hölder weights' effective sample size near a target
    dispersion = "dispersion"  # p from the spread of the log-ratios over a row's chosen tokens
    kl = "kl"  # keep the update's approximate KL to π_old near a target (PPO's adaptive-KL controller, on p)


@dataclass
class AdaptivePConfig:
    """algo.p_schedule=adaptive: p for the next update from the current one's statistics, starting at p_start."""

    rule: AdaptiveRule = option(
        AdaptiveRule.ess,
        "ess: weights' ESS near a target | dispersion: p from log-ratio std | kl: PPO-KL near a target",
    )
    p_min: float | None = option(None, "lowest p (None: the lower of p_start and p_end)")
    p_max: float | None = option(None, "highest p (None: the higher of p_start and p_end)")
    max_step: float = option(0.25, "largest change of p from one update to the next")
    ess_target: float = option(0.9, "rule ess: the weight ESS fraction to hold (below: p rises, above: p falls)")
    ess_gain: float = option(2.0, "rule ess: change of p per unit of (ESS − target)")
    dispersion_scale: float = option(0.2, "rule dispersion: the log-ratio std at which p reaches p_max")
    kl_target: float = option(0.02, "rule kl: the update's PPO-KL to hold (above: p rises, below: p falls)")
    kl_gain: float = option(0.2, "rule kl: change of p per unit of (KL − target) / target")


@dataclass
class AlgoConfig:
    name: str = option("holderpo", "a label for runs and plots")
    loss: str = option("holder_seq", "a policy loss: holder_seq, holder_token, grpo, gspo, gmpo (agentrl.losses)")
    loss_kwargs: dict[str, Any] = option(help="extra keyword options of that loss (e.g. agg)", factory=dict)
    clip_low: float = option(0.2, "ε below: ratios under 1 − ε are clipped")
    clip_high: float = option(0.2, "ε above: ratios over 1 + ε are clipped")
    p_schedule: PSchedule = option(
        PSchedule.linear, "shape of the Hölder order over training: constant, linear, cosine, power, cubic, adaptive"
    )
    p_start: float = option(1.0, "p at the first iteration")
    p_end: float = option(-1.0, "p at the schedule's last iteration")
    p_power: float = option(2.0, 'exponent of the "power" shape')
    p_schedule_steps: int | None = option(None, "iterations the schedule spans; None: trainer.iterations")
    adaptive: AdaptivePConfig = option(help="the adaptive p controller (p_schedule=adaptive)", factory=AdaptivePConfig)
    # a forced token (one allowed continuation) has log-ratio exactly 0: counted, it pulls the sequence's mean toward
    # ratio 1 and widens the sequence clip's band by 1/(1 − forced share); `chosen` (the default) leaves them out,
    # and without constrained decoding there are none, so it is then the reference's aggregation exactly
    aggregate_over: AggregateOver = option(
        AggregateOver.chosen, "tokens a sequence-level loss averages over: chosen (no forced tokens) | generated"
    )
    advantage: AdvantageConfig = option(help="group-relative advantages", factory=AdvantageConfig)

    def order(self, iterations: int) -> FixedSchedule | PController:
        """What sets p for each update of a run of `iterations`: the fixed schedule, or the adaptive controller."""
        if self.p_schedule != PSchedule.adaptive:
            steps = self.p_schedule_steps or iterations
            return FixedSchedule(str(self.p_schedule), steps, self.p_start, self.p_end, self.p_power)
        a = self.adaptive
        return PController(
            str(a.rule),
            self.p_start,
            *self._p_range(),
            a.max_step,
            ess_target=a.ess_target,
            ess_gain=a.ess_gain,
            dispersion_scale=a.dispersion_scale,
            kl_target=a.kl_target,
            kl_gain=a.kl_gain,
        )

    def p_at(self, iteration: int, iterations: int) -> float:
        """p of a fixed schedule for training iteration `iteration` (0-based) of a run of `iterations`."""
        return self.order(iterations).p(iteration)

    def _p_range(self) -> tuple[float, float]:
        low = self.adaptive.p_min if self.adaptive.p_min is not None else min(self.p_start, self.p_end)
        high = self.adaptive.p_max if self.adaptive.p_max is not None else max(self.p_start, self.p_end)
        return low, high

    def loss_options(self, reply_length: int) -> dict[str, Any]:
        """The extra options passed to the loss. A loss with a constant length normaliser (Dr.GRPO's norm_length)
        defaults it to the reply length limit, so the two can never disagree."""
        options = dict(self.loss_kwargs)
        if self.loss in POLICY_LOSSES and "norm_length" in inspect.signature(POLICY_LOSSES[self.loss]).parameters:
            options.setdefault("norm_length", reply_length)
        return options

    def validate(self, iterations: int, reply_length: int) -> list[str]:
        """Problems with the loss name, its options, the clip range and the p schedule (all at once)."""
        problems: list[str] = []
        for name in ("clip_low", "clip_high", "p_start", "p_end", "p_power"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"algo.{name} must be a finite number, got {getattr(self, name)}")
        step = self.advantage
        if not (math.isfinite(step.step_weight) and step.step_weight >= 0):
            problems.append(
                f"algo.advantage.step_weight must be >= 0 (0 turns step credit off), got {step.step_weight}"
            )
        if not 0 <= step.step_gamma <= 1:
            problems.append(f"algo.advantage.step_gamma must be in [0, 1] (GiGPO: 0.95), got {step.step_gamma}")
        if self.loss not in POLICY_LOSSES:
            problems.append(unknown_name_message("algo.loss", self.loss, POLICY_LOSSES))
        else:
            problems += check_loss_options(self.loss, self.loss_options(reply_length), self.clip_low, self.clip_high)
        adaptive = self.p_schedule == PSchedule.adaptive
        try:
            self.order(iterations)  # the schedule or controller checks its own settings
        except ConfigError as err:
            where = (
                "algo.adaptive" if adaptive else "the schedule spans algo.p_schedule_steps, default trainer.iterations"
            )
            problems.append(f"{err} ({where})")
        if adaptive and self.adaptive.rule == AdaptiveRule.ess and self.loss not in ("holder_seq", "holder_token"):
            problems.append(
                f"algo.adaptive.rule=ess reads the Hölder weights' ESS, which algo.loss={self.loss} does not "
                "report: use holder_seq or holder_token, or algo.adaptive.rule=dispersion"
            )
        return problems


def check_loss_options(loss: str, options: dict[str, Any], clip_low: float, clip_high: float) -> list[str]:
    """Reject options the loss does not take (close match from its signature) and values it refuses, by calling
    the loss once on a one-token batch. Runs in microseconds; no model needed."""
    fn = POLICY_LOSSES[loss]
    params = inspect.signature(fn).parameters
    takes = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = [k for k in options if k not in takes or k in LEARNER_PASSED_OPTIONS]
    if unknown:
        own = [n for n in takes if n not in LEARNER_PASSED_OPTIONS]
        return [
            f"algo.loss_kwargs.{k}: loss {loss!r} takes no option {k!r}; its options: {', '.join(own) or 'none'}"
            + (f"; did you mean {close[0]!r}?" if (close := difflib.get_close_matches(k, own, n=1)) else "")
            for k in unknown
        ]
    one = torch.zeros(1, 1)
    standard = {
        "p": 1.0,
        "clip_low": clip_low,
        "clip_high": clip_high,
        "num_seqs": 1,
        "num_tokens": 1,
        "is_weight": None,
        "aggregate_mask": None,
    }
    try:
        fn(one, one, torch.ones(1), torch.ones(1, 1), **{k: standard[k] for k in passed_options(fn)}, **options)
    except (ConfigError, ValueError, TypeError) as err:
        return [f"algo.loss={loss!r} with options {options}: {err}"]
    return []
