"""Schedules for the Hölder order p (PAPER.md §4). The step unit is one training iteration (one rollout round).

    p(s) = p_start + (p_end − p_start) · f(x),   x = clamp(s / total_steps, 0, 1)

    shape      f(x)                 reference-code name (direction comes from p_start/p_end here)
    constant   0  (p = p_start)     —
    linear     x                    linear / linear_dec
    cosine     (1 − cos πx) / 2     sin / cos
    power      x^power (2: square)  quad / quad_dec
    cubic      (1 + (2x − 1)^3) / 2 cubic / cubic_dec

The paper's defaults: math 2 → −2 linear; ALFWorld 1 → −1 linear.

`adaptive` (PController) sets p for the next update from statistics of the current one, within [low, high]
(default: the range p_start..p_end spans) and moving at most `max_step` per update:

    ess         p ← p − gain · (ESS − target)      ESS = train/weight_ess_frac, the Hölder weights' effective sample
                                                   size as a fraction of the tokens: below the target (the update
                                                   concentrates on a few tokens) p rises toward `high`, above it
                                                   (tame ratios) p falls toward `low`
    dispersion  p ← low + (high − low) · min(1, σ / scale)   σ = train/log_ratio_std, the std of the log-ratios over
                                                   a row's chosen tokens: p → high as the ratios spread
    kl          p ← p + gain · (KL − target) / target   KL = train/ppo_kl, the update's approximate KL to π_old (PPO's
                                                   adaptive-KL controller, acting on p): an update that went far
                                                   raises p toward `high`, a tame one lowers it toward `low`
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from agentrl.errors import ConfigError, lookup

SCHEDULE_SHAPES: dict[str, Callable[[float, float], float]] = {
    "constant": lambda x, n: 0.0,
    "linear": lambda x, n: x,
    "cosine": lambda x, n: (1.0 - math.cos(math.pi * x)) / 2.0,
    "power": lambda x, n: x**n,
    "cubic": lambda x, n: (1.0 + (2.0 * x - 1.0) ** 3) / 2.0,
}


def validate_schedule(shape: str, total_steps: int, p_start: float, p_end: float, power: float = 2.0) -> None:
    """Raise ConfigError for an unknown shape, total_steps < 1, or non-finite values."""
    lookup("p schedule shape", SCHEDULE_SHAPES, shape)
    if int(total_steps) < 1:
        raise ConfigError(f"p schedule total_steps must be >= 1, got {total_steps}; set it to the number of iterations")
    for name, value in (("p_start", p_start), ("p_end", p_end), ("power", power)):
        if not math.isfinite(value):
            raise ConfigError(f"p schedule {name} must be a finite number, got {value}")
    if shape == "power" and power <= 0:
        raise ConfigError(f"p schedule shape 'power' needs power > 0, got {power}")


def p_schedule(shape: str, step: int, total_steps: int, p_start: float, p_end: float, power: float = 2.0) -> float:
    """The value of p at iteration `step` (0-based) of a schedule spanning `total_steps` iterations."""
    validate_schedule(shape, total_steps, p_start, p_end, power)
    x = min(1.0, max(0.0, step / total_steps))
    return p_start + (p_end - p_start) * SCHEDULE_SHAPES[shape](x, power)


class FixedSchedule:
    """p from a fixed schedule shape (the paper's): nothing to observe, nothing to save."""

    def __init__(self, shape: str, total_steps: int, p_start: float, p_end: float, power: float = 2.0) -> None:
        validate_schedule(shape, total_steps, p_start, p_end, power)
        self.shape, self.total_steps, self.p_start, self.p_end, self.power = shape, total_steps, p_start, p_end, power

    def p(self, iteration: int) -> float:
        """p for training iteration `iteration` (0-based). The reference (verl's 1-based global step, progress =
        step / schedule_steps) evaluates the schedule at step iteration + 1: the first update already moves one step,
        and the last update of a run whose schedule spans the run uses exactly p_end."""
        return p_schedule(self.shape, iteration + 1, self.total_steps, self.p_start, self.p_end, self.power)

    def observe(self, row: Mapping[str, Any]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        pass


class PController:
    """algo.p_schedule=adaptive: p for the next update from the current update's metrics (module docstring).

    Deterministic given the metrics rows it observes (rank-averaged, so every rank moves p alike); its state (p) is
    saved in each checkpoint, so a resumed run continues the same p sequence."""

    INPUTS = {"ess": "train/weight_ess_frac", "dispersion": "train/log_ratio_std", "kl": "train/ppo_kl"}

    def __init__(
        self,
        rule: str,
        p_start: float,
        low: float,
        high: float,
        max_step: float,
        *,
        ess_target: float = 0.9,
        ess_gain: float = 2.0,
        dispersion_scale: float = 0.2,
        kl_target: float = 0.02,
        kl_gain: float = 0.2,
    ) -> None:
        self.rule, self.low, self.high, self.max_step = rule, low, high, max_step
        self.ess_target, self.ess_gain, self.dispersion_scale = ess_target, ess_gain, dispersion_scale
        self.kl_target, self.kl_gain = kl_target, kl_gain
        problems = self._problems()
        if problems:
            raise ConfigError("; ".join(problems))
        self._p = min(high, max(low, p_start))

    def _problems(self) -> list[str]:
        """What is wrong with the controller's settings (empty: nothing)."""
        problems = []
        if self.rule not in self.INPUTS:
            problems.append(f"adaptive p rule {self.rule!r} is not one of {sorted(self.INPUTS)}")
        low, high = self.low, self.high
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            problems.append(f"adaptive p needs a finite range low < high, got [{low}, {high}] (set p_min and p_max)")
        for name in ("max_step", "ess_gain", "dispersion_scale", "kl_target", "kl_gain"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"adaptive p {name} must be a finite number > 0, got {value}")
        if not 0 < self.ess_target <= 1:
            problems.append(
                f"adaptive p ess_target must be in (0, 1] (a fraction of the tokens), got {self.ess_target}"
            )
        return problems

    def p(self, iteration: int) -> float:
        return self._p

    def target(self, value: float) -> float:
        """Where the rule would put p, given its input `value` (before bounds and the rate limit)."""
        if self.rule == "ess":
            return self._p - self.ess_gain * (value - self.ess_target)
        if self.rule == "kl":
            return self._p + self.kl_gain * (value - self.kl_target) / self.kl_target
        return self.low + (self.high - self.low) * min(1.0, max(0.0, value) / self.dispersion_scale)

    def observe(self, row: Mapping[str, Any]) -> dict[str, float]:
        """Move p after an update whose metrics row is `row`; returns the controller's metrics for that row. A row
        without the rule's input (a skipped update) or with a non-finite one leaves p where it is."""
        name = self.INPUTS[self.rule]
        value = row.get(name)
        report = {"p_control/input": math.nan, "p_control/target_p": math.nan}
        if isinstance(value, int | float) and math.isfinite(value):
            target = self.target(float(value))
            step = min(self.max_step, max(-self.max_step, target - self._p))
            self._p = min(self.high, max(self.low, self._p + step))
            report = {"p_control/input": float(value), "p_control/target_p": target}
        return {**report, "p_control/next_p": self._p}

    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "p": self._p}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore p from a checkpoint; refuses one without the controller's state or with another rule's."""
        if not state or state.get("rule") != self.rule or not math.isfinite(float(state.get("p", math.nan))):
            raise ConfigError(
                f"the checkpoint holds no state of the adaptive p controller (rule {self.rule}; found {state!r:.80}): "
                "it was written by a run with another algo.p_schedule; resume it with that schedule"
            )
        self._p = float(state["p"])
