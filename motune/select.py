"""Selection rules: which network of a finished study to use.

The knee is one answer; people also ask for "the sparsest network within 1 pp of the most
accurate one" and "the most accurate network within a size budget" (optuna issues #5284,
#2273). Each rule is a small object that picks one trial from the study's *networks*:

* :class:`Knee` (the default): the sampler's knee (the full-fidelity retrain once there is
  one), :func:`motune.knee_trial`;
* :class:`MaxAccuracyDrop` ``(drop)``: the sparsest network (fewest nonzero penalised
  weights) whose validation accuracy is within ``drop`` (0.01 = 1 percentage point) of the
  most accurate network's;
* :class:`SizeBudget` ``(max_nonzeros=N)`` or ``(max_fraction=F)``: the most accurate
  network with at most ``N`` nonzero penalised weights, or at most the fraction ``F`` of
  them.

The networks are the COMPLETE weighted-sum trials with finite objectives (both fidelities:
every one is a trained network with a checkpoint), less the *collapsed* ones: no penalised
weight left, or a validation accuracy no better than such an empty network's (plus
:data:`~motune.trial_pruning.CHANCE_SLACK`): a chance-level network is no answer to any
rule. Baseline trials (SMGD, GMP, ...) are comparisons, not candidates.

**Validation accuracy** decides, never test accuracy: the test split must stay untouched by
every choice made on the study, or the chosen network's test accuracy would be an
optimistic estimate (picking the best of many on the test data is fitting to it).

Example:

    >>> import optuna
    >>> from optuna.trial import create_trial
    >>> study = optuna.create_study(directions=["minimize", "minimize"])
    >>> for acc, nz in [(0.97, 900), (0.965, 500), (0.95, 300), (0.80, 40)]:
    ...     study.add_trial(create_trial(values=[1 - acc, nz], params={"l1_weight": nz / 1e4},
    ...         distributions={"l1_weight": optuna.distributions.FloatDistribution(0, 1)},
    ...         user_attrs={"kind": "weighted_sum", "val_accuracy": acc, "nonzeros": nz, "fraction_kept": nz / 1000}))
    >>> select(study, max_accuracy_drop=0.01).number, select(study, max_nonzeros=400).number
    (1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from motune.trial_pruning import CHANCE_SLACK
from motune.trials import WEIGHTED_SUM, finite_complete, number_or_none, trial_kind

__all__ = ["Knee", "MaxAccuracyDrop", "NothingFits", "Rule", "SelectionError", "SizeBudget", "networks", "rule_from", "select"]

_EPS = 1e-12  # accuracies and fractions equal up to rounding count as equal


class SelectionError(ValueError):
    """A rule's option has a bad value, or two rules were given: ``option`` names it, ``detail`` says why."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option}: {detail}")
        self.option, self.detail = option, detail


class NothingFits(SelectionError):
    """No network of the study meets the rule (e.g. a size budget below the smallest network)."""


class Rule(Protocol):
    """A selection rule: picks one trial of ``networks`` (see :func:`networks`), or raises :class:`NothingFits`."""

    option: str  # the keyword of :func:`select` it comes from ("knee" for the default)

    def __call__(self, networks: Sequence[FrozenTrial]) -> FrozenTrial: ...

    def describe(self) -> str:
        """What the rule asks for, in words."""
        ...


def _acc(t: FrozenTrial) -> float:
    return float(t.user_attrs["val_accuracy"])


def _nonzeros(t: FrozenTrial) -> int:
    return int(t.user_attrs["nonzeros"])


def _fraction(t: FrozenTrial) -> float:
    return float(t.user_attrs["fraction_kept"])


def describe_network(t: FrozenTrial) -> str:
    """``trial 7 (1234 nonzeros, 42.56% kept, 95.00% val accuracy)``."""
    return (f"trial {t.number} ({_nonzeros(t)} nonzeros, {100 * _fraction(t):.2f}% kept, "
            f"{100 * _acc(t):.2f}% val accuracy)")


def _smallest(networks: Sequence[FrozenTrial]) -> FrozenTrial:
    return min(networks, key=lambda t: (_nonzeros(t), -_acc(t), t.number))


@dataclass(frozen=True)
class Knee:
    """The study's knee (:func:`select` asks the study's sampler for it; not a rule over ``networks``)."""

    option: ClassVar[str] = "knee"

    def __call__(self, networks: Sequence[FrozenTrial]) -> FrozenTrial:
        raise TypeError("the knee comes from the study's sampler: use motune.select(study)")

    def describe(self) -> str:
        return "the knee of the front"


@dataclass(frozen=True)
class MaxAccuracyDrop:
    """The sparsest network within ``drop`` of the best validation accuracy (0.01 = 1 pp).

    Ties (same nonzeros) go to the more accurate network, then to the lower trial number.
    """

    drop: float
    option: ClassVar[str] = "max_accuracy_drop"

    def __post_init__(self) -> None:
        if isinstance(self.drop, bool) or not isinstance(self.drop, (int, float)) or not 0.0 <= self.drop < 1.0:
            raise SelectionError(self.option, f"must be an accuracy difference in [0, 1) (0.01 = 1 percentage point), "
                                 f"got {self.drop!r}")

    def __call__(self, networks: Sequence[FrozenTrial]) -> FrozenTrial:
        if not networks:
            raise NothingFits(self.option, "the study has no completed weighted-sum network yet")
        best = max(_acc(t) for t in networks)
        close = [t for t in networks if _acc(t) >= best - self.drop - _EPS]
        return min(close, key=lambda t: (_nonzeros(t), -_acc(t), t.number))

    def describe(self) -> str:
        return f"the sparsest network within {100 * self.drop:g} pp of the best validation accuracy"


@dataclass(frozen=True)
class SizeBudget:
    """The most accurate network (validation) with at most ``max_nonzeros`` nonzero penalised
    weights, or at most the fraction ``max_fraction`` of them; exactly one of the two.

    Ties (same accuracy) go to the smaller network, then to the lower trial number.
    """

    max_nonzeros: int | None = None
    max_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.max_nonzeros is None) == (self.max_fraction is None):
            raise SelectionError("max_nonzeros", "give exactly one of max_nonzeros and max_fraction")
        n, f = self.max_nonzeros, self.max_fraction
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise SelectionError(self.option, f"must be a whole number of weights >= 0, got {n!r}")
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0):
            raise SelectionError(self.option, f"must be a fraction of the penalised weights in [0, 1], got {f!r}")

    @property
    def option(self) -> str:  # type: ignore[override]
        return "max_nonzeros" if self.max_nonzeros is not None else "max_fraction"

    def fits(self, t: FrozenTrial) -> bool:
        if self.max_nonzeros is not None:
            return _nonzeros(t) <= self.max_nonzeros
        return _fraction(t) <= float(self.max_fraction) + _EPS  # type: ignore[arg-type]

    def __call__(self, networks: Sequence[FrozenTrial]) -> FrozenTrial:
        if not networks:
            raise NothingFits(self.option, "the study has no completed weighted-sum network yet")
        fit = [t for t in networks if self.fits(t)]
        if not fit:
            value = self.max_nonzeros if self.max_nonzeros is not None else self.max_fraction
            raise NothingFits(self.option, f"no network fits {value:g}; the smallest is {describe_network(_smallest(networks))}")
        return min(fit, key=lambda t: (-_acc(t), _nonzeros(t), t.number))

    def describe(self) -> str:
        if self.max_nonzeros is not None:
            return f"the most accurate network with at most {self.max_nonzeros} nonzero penalised weights"
        return f"the most accurate network keeping at most {100 * float(self.max_fraction):g}% of the penalised weights"  # type: ignore[arg-type]


def rule_from(
    *, max_accuracy_drop: float | None = None, max_nonzeros: int | None = None, max_fraction: float | None = None
) -> Rule:
    """The rule the keywords ask for (none: :class:`Knee`); :class:`SelectionError` for two at once or a bad value.

    >>> rule_from(max_fraction=0.05).describe()
    'the most accurate network keeping at most 5% of the penalised weights'
    """
    given = {k: v for k, v in (("max_accuracy_drop", max_accuracy_drop), ("max_nonzeros", max_nonzeros),
                               ("max_fraction", max_fraction)) if v is not None}
    if len(given) > 1:
        first, second = list(given)[:2]
        raise SelectionError(second, f"one rule at a time: {first} is given too")
    if max_accuracy_drop is not None:
        return MaxAccuracyDrop(max_accuracy_drop)
    if given:
        return SizeBudget(max_nonzeros=max_nonzeros, max_fraction=max_fraction)
    return Knee()


def _usable(t: FrozenTrial) -> bool:
    a = t.user_attrs
    return (trial_kind(t) == WEIGHTED_SUM and number_or_none(a.get("val_accuracy")) is not None
            and number_or_none(a.get("nonzeros")) is not None and number_or_none(a.get("fraction_kept")) is not None)


def networks(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials the rules choose from: completed weighted-sum networks that have not collapsed (module docstring)."""
    done = [t for t in finite_complete(trials) if _usable(t)]
    empty = [_acc(t) for t in done if _nonzeros(t) == 0]
    chance = max(empty) + CHANCE_SLACK if empty else -math.inf
    return [t for t in done if _nonzeros(t) > 0 and _acc(t) > chance]


def select(
    study: optuna.Study,
    rule: Rule | None = None,
    *,
    max_accuracy_drop: float | None = None,
    max_nonzeros: int | None = None,
    max_fraction: float | None = None,
) -> FrozenTrial:
    """The trial of ``study`` that a selection rule picks (module docstring); by default the knee.

    Give a ``rule`` object or one of the keywords (at most one): ``max_accuracy_drop=0.01``
    (the sparsest network within 1 pp of the most accurate), ``max_nonzeros=N`` or
    ``max_fraction=F`` (the most accurate network within that size). Accuracy is
    *validation* accuracy: the test split stays untouched by the choice. Raises
    :class:`SelectionError` for a bad value or two rules, :class:`NothingFits` when no network
    meets the rule (its message names the smallest network there is).
    """
    if rule is not None and any(v is not None for v in (max_accuracy_drop, max_nonzeros, max_fraction)):
        raise SelectionError("rule", "give a rule object or keywords, not both")
    rule = rule or rule_from(max_accuracy_drop=max_accuracy_drop, max_nonzeros=max_nonzeros, max_fraction=max_fraction)
    if isinstance(rule, Knee):
        from motune.study import knee_trial

        knee = knee_trial(study)
        if knee is None:
            raise NothingFits("knee", f"study {study.study_name!r} has no knee yet (no completed weighted-sum trial)")
        return knee
    return rule(networks(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
