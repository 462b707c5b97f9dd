"""Pick one network from a study's front: the knee, or by an accuracy or size rule.

A study hands back many networks; most users want one. Besides the knee (the default),
two rules answer the questions asked of tuning frameworks (optuna issues #5284, #2273):

* ``max_accuracy_drop=d``: the *sparsest* network whose validation accuracy is within
  ``d`` (a fraction: 0.01 is one percentage point) of the most accurate one;
* ``max_nonzeros=n`` / ``max_fraction=f``: the *most accurate* network with at most ``n``
  nonzero penalised weights / at most the fraction ``f`` of them kept (a size budget).

The rules look at the completed weighted-sum trials of both fidelities (every network
the search trained, the knee's retrain included; not the baselines) and rank them by
**validation** accuracy: the test split stays untouched by selection, so the chosen
network's test accuracy is still an honest estimate. Ties go to the smaller network,
then the lower trial number. Each rule is a small function over a list of trials, so it
can also be applied to any list (e.g. the trials of several studies).

Example::

    import motune
    study = ...  # a motune study (motune.run_study, or optuna.load_study on its storage)
    best_small = motune.select(study, max_fraction=0.05)    # most accurate with <= 5% kept
    cheap = motune.select(study, max_accuracy_drop=0.01)    # sparsest within 1 pp of the best
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from motune.config import StudyConfig
from motune.trials import WEIGHTED_SUM, finite_complete, number_or_none, trial_kind

__all__ = ["SelectionError", "candidates", "most_accurate_within", "select", "sparsest_within_drop"]

RULES: tuple[str, ...] = ("max_accuracy_drop", "max_nonzeros", "max_fraction")


class SelectionError(ValueError):
    """No network fits the rule, or the rule's value is invalid; ``option`` names the rule."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option}: {detail}")
        self.option, self.detail = option, detail


def candidates(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The completed weighted-sum trials with finite values and the attributes the rules read."""
    return [
        t for t in finite_complete([t for t in trials if t.state == TrialState.COMPLETE])
        if trial_kind(t) == WEIGHTED_SUM
        and all(number_or_none(t.user_attrs.get(k)) is not None for k in ("val_accuracy", "nonzeros", "fraction_kept"))
    ]


def _acc(t: FrozenTrial) -> float:
    return float(t.user_attrs["val_accuracy"])


def _nz(t: FrozenTrial) -> int:
    return int(t.user_attrs["nonzeros"])


def sparsest_within_drop(trials: Sequence[FrozenTrial], drop: float) -> FrozenTrial:
    """The network with the fewest nonzeros whose val accuracy is at least the best's minus ``drop``.

    >>> from optuna.trial import create_trial
    >>> def net(acc, nz): return create_trial(values=[1 - acc, nz], user_attrs={
    ...     "val_accuracy": acc, "nonzeros": nz, "fraction_kept": nz / 1000})
    >>> sparsest_within_drop([net(0.95, 900), net(0.945, 300), net(0.90, 50)], 0.01).user_attrs["nonzeros"]
    300
    """
    if not trials:
        raise SelectionError("max_accuracy_drop", "no completed weighted-sum trial to choose from yet")
    best = max(_acc(t) for t in trials)
    near = [t for t in trials if _acc(t) >= best - drop - 1e-12]
    return min(near, key=lambda t: (_nz(t), -_acc(t), t.number))


def most_accurate_within(trials: Sequence[FrozenTrial], option: str, budget: float) -> FrozenTrial:
    """The network with the highest val accuracy whose ``nonzeros`` (``option="max_nonzeros"``)
    or ``fraction_kept`` (``"max_fraction"``) is at most ``budget``.

    Raises :class:`SelectionError` naming the option and the smallest network there is
    when none fits.
    """
    if not trials:
        raise SelectionError(option, "no completed weighted-sum trial to choose from yet")
    key = "nonzeros" if option == "max_nonzeros" else "fraction_kept"
    fits = [t for t in trials if float(t.user_attrs[key]) <= budget]
    if not fits:
        small = min(trials, key=lambda t: (_nz(t), t.number))
        a = small.user_attrs
        raise SelectionError(option, f"no network fits {budget:g}; the smallest is trial {small.number} with "
                             f"{_nz(small)} nonzero weights ({100 * float(a['fraction_kept']):.2f}% kept)")
    return max(fits, key=lambda t: (_acc(t), -_nz(t), -t.number))


def _check(option: str, value: float) -> float:
    """The rule's value as a float, or :class:`SelectionError` (negative, NaN, a fraction above 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise SelectionError(option, f"must be a number >= 0, got {value!r}")
    if option != "max_nonzeros" and value > 1:
        raise SelectionError(option, f"must be a fraction in [0, 1] (0.01 is 1%), got {value!r}")
    return float(value)


def select(
    study: optuna.Study,
    *,
    max_accuracy_drop: float | None = None,
    max_nonzeros: int | None = None,
    max_fraction: float | None = None,
    config: StudyConfig | None = None,
) -> FrozenTrial:
    """The network a rule picks from ``study`` (see the module docstring); no rule: the knee.

    At most one rule may be given. ``config`` is the study's config (read from the study
    when omitted; only the knee needs it). Raises :class:`SelectionError` (a
    ``ValueError`` naming the rule) for an invalid value, two rules at once, or when no
    network fits.
    """
    given = {name: value for name, value in zip(RULES, (max_accuracy_drop, max_nonzeros, max_fraction)) if value is not None}
    if len(given) > 1:
        raise SelectionError(" and ".join(given), "give at most one selection rule")
    if not given:
        from motune.study import knee_trial

        knee = knee_trial(study, config)
        if knee is None:
            raise SelectionError("knee", "the study has no knee yet; run more trials or pick a rule")
        return knee
    (option, value), = given.items()
    value = _check(option, value)
    trials = candidates(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if option == "max_accuracy_drop":
        return sparsest_within_drop(trials, value)
    return most_accurate_within(trials, option, value)
