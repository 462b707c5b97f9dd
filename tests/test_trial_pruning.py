"""Multi-objective trial pruning: the rule on hand-made intermediates, the sampler's reading of a
collapsed trial, and real (tiny) digits trials that end PRUNED while the study goes on."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from motune.config import ConfigError, StudyConfig
from motune.report import print_summary
from motune.sampler import FRONT_END_ATTR, READ_ATTR, KneeSampler, SearchRules, choose_weight, read_trials
from motune.study import Objective, create_or_load_study, run_study
from motune.train import EpochRecord
from motune.trial_pruning import (
    FrontPruner,
    Intermediate,
    TrialMonitor,
    chance_level,
    compact,
    dominating,
    front_end,
    reference_intermediates,
)
from motune.trials import FIDELITY, INTERMEDIATES, KIND, PRUNE_REASON, WEIGHTED_SUM

DIST = {"l1_weight": FloatDistribution(0.0, 1.0)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trajectory(points: list[tuple[float, float]], accuracy: float = 0.9) -> list[Intermediate]:
    return [Intermediate(e, ce, l1, accuracy) for e, (ce, l1) in enumerate(points, start=1)]


# Two completed trials, a trade-off at every epoch: accurate and dense, or sparse and less accurate.
REFERENCE = {
    0: trajectory([(1.8, 440.0), (0.9, 540.0), (0.4, 640.0), (0.3, 700.0)]),
    3: trajectory([(1.9, 270.0), (1.2, 220.0), (0.7, 210.0), (0.55, 190.0)]),
}
# The reference front's extent at epoch 2 and 3: CE 0.3 / 0.3, l1 320 / 430.


# ----------------------------------------------------------------------------- the rule


def test_a_collapsing_trajectory_is_pruned_after_patience_epochs_not_before() -> None:
    dying = [Intermediate(1, 2.0, 150.0, 0.45), Intermediate(2, 2.30, 18.0, 0.10), Intermediate(3, 2.30, 2.0, 0.10),
             Intermediate(4, 2.30, 0.0, 0.10)]
    pruner = FrontPruner(patience=3, margin=0.1)
    assert pruner.prune(dying[:3], {}, num_classes=10, epochs=10) is None  # two epochs at chance: not yet
    decision = pruner.prune(dying, {}, num_classes=10, epochs=10)
    assert decision is not None and decision.collapsed and decision.epoch == 4
    assert decision.reason.startswith("collapsed: chance-level validation accuracy")
    # No weight left counts as collapsed even where the accuracy is above chance.
    empty = [Intermediate(1, 1.5, 0.0, 0.5), Intermediate(2, 1.4, 0.0, 0.5)]
    decision = FrontPruner(patience=2).prune(empty, {}, num_classes=10, epochs=10)
    assert decision is not None and decision.collapsed and "no penalised weight left" in decision.reason


def test_never_pruned_at_its_last_epoch_and_chance_level_follows_the_classes() -> None:
    dying = [Intermediate(e, 2.30, 0.0, 0.10) for e in (1, 2, 3)]
    assert FrontPruner(patience=2).prune(dying, {}, num_classes=10, epochs=3) is None  # trained by then: it completes
    assert FrontPruner(patience=2).prune(dying[:2], {}, num_classes=10, epochs=3) is not None
    assert chance_level(0.11, 10) and not chance_level(0.2, 10) and chance_level(0.5, 2) and not chance_level(0.6, 2)


def test_a_dominated_trial_is_pruned_and_names_the_trial_that_dominates_it() -> None:
    worse = trajectory([(2.0, 500.0), (1.4, 600.0), (0.9, 700.0)], accuracy=0.7)  # worse than trial 0 in both
    decision = FrontPruner(patience=2, margin=0.1).prune(worse, REFERENCE, num_classes=10, epochs=10)
    assert decision is not None and not decision.collapsed and decision.epoch == 3
    assert decision.reason.startswith("dominated: completed trial 0")


def test_a_non_dominated_trial_is_not_pruned() -> None:
    # Between the two references at every epoch: a trade-off point, not worse than either in both.
    between = trajectory([(1.85, 350.0), (1.05, 380.0), (0.55, 400.0)])
    assert FrontPruner(patience=1, margin=0.0).prune(between, REFERENCE, num_classes=10, epochs=10) is None
    # The sparsest and least accurate so far is no worse: a new end of the front.
    sparse = trajectory([(2.1, 100.0), (1.6, 90.0), (1.3, 80.0)])
    assert FrontPruner(patience=1, margin=0.0).prune(sparse, REFERENCE, num_classes=10, epochs=10) is None


@pytest.mark.parametrize("margin,pruned", [(0.05, True), (0.15, True), (0.25, False), (0.5, False)])
def test_the_margin_is_respected(margin: float, pruned: bool) -> None:
    """At epochs 2-3, trial 0 is better by 0.2 of the front's extent in each objective (CE 0.3 → 0.06; l1 320/430)."""
    scale2, scale3 = np.array([0.3, 320.0]), np.array([0.3, 430.0])
    p2 = np.array([0.9, 540.0]) + 0.2 * scale2
    p3 = np.array([0.4, 640.0]) + 0.2 * scale3
    cand = [Intermediate(1, 1.8, 440.0, 0.7), Intermediate(2, *p2, 0.7), Intermediate(3, *p3, 0.7)]
    decision = FrontPruner(patience=2, margin=margin).prune(cand, REFERENCE, num_classes=10, epochs=10)
    assert (decision is not None) is pruned


def test_dominance_needs_a_reference_front_and_patience() -> None:
    worse = trajectory([(2.0, 500.0), (1.4, 600.0), (0.9, 700.0)], accuracy=0.7)
    only_one = {0: REFERENCE[0]}  # a single point has no extent to measure a margin in
    assert FrontPruner(patience=1, margin=0.1).prune(worse, only_one, num_classes=10, epochs=10) is None
    assert dominating([0.9, 700.0], np.array([[0.4, 640.0]]), 0.0) is None
    # Dominated at epoch 3 only (epoch 2 is a trade-off point): patience 2 waits.
    once = trajectory([(2.0, 500.0), (1.05, 380.0), (0.9, 700.0)], accuracy=0.7)
    assert FrontPruner(patience=2, margin=0.1).prune(once, REFERENCE, num_classes=10, epochs=10) is None
    assert FrontPruner(patience=1, margin=0.1).prune(once, REFERENCE, num_classes=10, epochs=10) is not None


@pytest.mark.parametrize("study,key", [({"prune_patience": 0}, "study.prune_patience"),
                                       ({"prune_margin": 1.0}, "study.prune_margin"),
                                       ({"prune": "yes"}, "study.prune")])
def test_bad_prune_settings_name_their_key(study: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        StudyConfig.from_dict({"study": study})
    with pytest.raises(ValueError, match="prune_"):
        FrontPruner(patience=0)


# ----------------------------------------------------------------------------- the references


def _completed(study: optuna.Study, lam: float, trajectory_: list[Intermediate]) -> None:
    last = trajectory_[-1]
    study.add_trial(create_trial(params={"l1_weight": lam}, distributions=DIST, values=[last.cross_entropy, last.l1],
                                 user_attrs={KIND: WEIGHTED_SUM, FIDELITY: "front", INTERMEDIATES: compact(trajectory_)}))


def test_a_planned_trial_is_judged_against_what_its_plan_read_not_what_finished_since() -> None:
    """Issue 12: whether a trial is pruned must not depend on which other trials happened to finish first.

    KneeSampler stores the finished trials its plan had read (``READ_ATTR``); a trial that
    finishes after the plan (another worker's) is not a reference, however much better it is.
    """
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=KneeSampler(seed=0))
    _completed(study, 0.0, REFERENCE[0])
    _completed(study, 0.1, REFERENCE[3])
    trial = study.ask()  # planned now, with trials 0 and 1 read
    trial.suggest_float("l1_weight", 0.0, 1.0)
    assert trial.storage.get_trial_system_attrs(trial._trial_id)[READ_ATTR] == [0, 1]
    _completed(study, 0.05, trajectory([(1.9, 200.0), (0.95, 100.0), (0.45, 120.0)]))  # trial 3: another worker's
    worse = trajectory([(1.85, 350.0), (1.05, 380.0), (0.55, 400.0)], accuracy=0.7)  # a trade-off against 0 and 1

    monitor = TrialMonitor.for_trial(trial, "front", num_classes=10, epochs=10, patience=2, margin=0.1)
    assert sorted(monitor.reference) == [0, 1]
    for row in worse:
        monitor(EpochRecord(row.epoch, train_loss=0.0, l1=row.l1, nonzeros=1, nonzeros_per_layer={}, lr=0.1, seconds=0.0,
                            val_cross_entropy=row.cross_entropy, val_accuracy=row.accuracy))  # TrialPruned if pruned
    # What the same trial would meet without a plan (another sampler): every completed trial.
    everyone = reference_intermediates(study.get_trials(), "front")
    assert sorted(everyone) == [0, 1, 3]
    assert FrontPruner(patience=2, margin=0.1).prune(worse, everyone, num_classes=10, epochs=10) is not None


# ----------------------------------------------------------------------------- the sampler


def _front(lam: float) -> tuple[float, float] | None:
    """A synthetic front that collapses for λ >= 0.02 (None), a convex trade-off below."""
    if lam >= 0.02:
        return None
    x = min(lam / 0.02, 1.0)
    return 0.1 + 0.6 * x**2, 800.0 * (1.0 - x) ** 2 + 20.0


def _search(prune: bool, n: int = 12) -> optuna.Study:
    sampler = KneeSampler(full_fidelity=False, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        values = _front(trial.suggest_float("l1_weight", 0.0, 1.0))
        if values is None:
            if prune:  # what TrialMonitor.record does for a collapsed trial
                trial.storage.set_trial_system_attr(trial._trial_id, FRONT_END_ATTR, [math.log(10), 0.0])
                raise optuna.TrialPruned()
            return math.log(10), 0.0
        return values

    for _ in range(n):
        study.optimize(objective, n_trials=1)
        if sampler.is_converged(study):
            break
    return study


def test_the_sampler_reads_a_collapsed_trial_as_the_end_of_the_front() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trial(create_trial(params={"l1_weight": 0.0}, distributions=DIST, values=[0.13, 816.0]))
    study.add_trial(create_trial(params={"l1_weight": 0.1}, distributions=DIST, state=TrialState.PRUNED,
                                 system_attrs={FRONT_END_ATTR: [2.30, 0.0]}))
    study.add_trial(create_trial(params={"l1_weight": 0.5}, distributions=DIST, state=TrialState.PRUNED))  # dominated
    records = read_trials(study.trials)
    assert [r.values for r in records] == [(0.13, 816.0), (2.30, 0.0), None]
    # The next weight is the normal of the segment to the end point, as after a completed collapsed trial,
    # not a walk down from λ = 0.1 (which a pruned trial without values would cause).
    lam, _ = choose_weight(records[:2], SearchRules())
    assert lam == pytest.approx((2.30 - 0.13) / ((2.30 - 0.13) + 816.0), rel=1e-12)
    assert KneeSampler().knee_trial(study).number == 0  # a pruned trial is never handed out as the knee


def test_pruning_collapsed_trials_leaves_the_search_as_it_was_and_never_past_the_cliff() -> None:
    plain, pruned = _search(prune=False), _search(prune=True)
    lams = [t.params["l1_weight"] for t in pruned.trials]
    assert lams == [t.params["l1_weight"] for t in plain.trials]  # same weights, same order
    assert sum(t.state == TrialState.PRUNED for t in pruned.trials) >= 1
    for i, lam in enumerate(lams):  # nothing tried beyond a weight already known to collapse
        assert all(lam <= c for c, t in zip(lams[:i], pruned.trials) if t.state == TrialState.PRUNED), lams
    knee = KneeSampler(full_fidelity=False).knee_trial(pruned)
    assert knee.state == TrialState.COMPLETE and knee.number == KneeSampler(full_fidelity=False).knee_trial(plain).number


# ----------------------------------------------------------------------------- real trials

TINY = {
    "study": {"name": "prune", "n_trials": 3, "baselines": [], "full_fidelity": False,
              "continuation": False},  # fresh trials: λ = 0.1 collapses (a child of λ = 0 need not)
    "data": {"limit": 400},
    "train": {"epochs": 8, "front_epochs": 8},
}


def test_a_collapsing_trial_ends_pruned_early_and_the_study_goes_on(tmp_path: Path) -> None:
    config = StudyConfig.from_dict(TINY)
    study = run_study(config, f"sqlite:///{tmp_path / 'p.db'}", artifact_dir=tmp_path / "art")
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and pruned[0].params["l1_weight"] == 0.1, [(t.number, t.state.name, t.params) for t in trials]
    t = pruned[0]
    rows = t.user_attrs[INTERMEDIATES]
    assert 1 <= len(rows) < 8 and [r[0] for r in rows] == list(range(1, len(rows) + 1))  # stopped early, every epoch kept
    assert t.user_attrs[PRUNE_REASON].startswith("collapsed") and t.user_attrs[KIND] == WEIGHTED_SUM
    end = t.system_attrs[FRONT_END_ATTR]  # the end of the front it was heading to: its last CE, no weights
    assert end[0] == pytest.approx(rows[-1][1], rel=1e-5) and end[1] == 0.0
    assert t.user_attrs[FIDELITY] == "front" and t.user_attrs["epochs"] == len(rows)
    # Not counted in the budget, not retried: exactly n_trials completed, nothing waiting, no retry of it.
    complete = [u for u in trials if u.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len(trials) > 3
    assert not [u for u in trials if u.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.FAIL)]
    assert all(len(u.user_attrs[INTERMEDIATES]) == 8 for u in complete)  # completed trials keep theirs too
    assert all(u.params["l1_weight"] <= 0.1 for u in trials)
    out = io.StringIO()
    print_summary(study, config, out)
    assert f"{t.number:>5} weighted_sum" in out.getvalue() and "pruned after" in out.getvalue()
    assert t.user_attrs[PRUNE_REASON] in out.getvalue()


def _reference_study(tmp_path: Path, points: list[tuple[float, float]]) -> tuple[optuna.Study, Objective]:
    """A study with two hand-made completed front trials whose intermediates are ``points`` at every epoch."""
    config = StudyConfig.from_dict({**TINY, "train": {"epochs": 4, "front_epochs": 4}})
    study = create_or_load_study(config, f"sqlite:///{tmp_path / 'd.db'}")
    for lam, (ce, l1) in zip((0.0, 0.05), points):
        rows = [[e, ce, l1, 0.9] for e in range(1, 5)]
        study.add_trial(create_trial(params={"l1_weight": lam}, distributions=DIST, values=[ce, l1],
                                     user_attrs={KIND: WEIGHTED_SUM, FIDELITY: "front", INTERMEDIATES: rows}))
    study.enqueue_trial({"l1_weight": 1e-3})
    return study, Objective(config, str(tmp_path / "art"), heartbeat_interval=None)


def test_a_real_trial_dominated_by_completed_ones_is_pruned(tmp_path: Path) -> None:
    study, objective = _reference_study(tmp_path, [(0.001, 5.0), (0.002, 1.0)])  # far better than any real network
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="dominated"):
        objective.train_trial(trial)
    study.tell(trial, state=TrialState.PRUNED)
    t = study.trials[trial.number]
    assert t.state == TrialState.PRUNED and len(t.user_attrs[INTERMEDIATES]) == 2  # patience 2: stopped at epoch 2 of 4
    assert "completed trial" in t.user_attrs[PRUNE_REASON] and FRONT_END_ATTR not in t.system_attrs


def test_a_real_trial_on_the_trade_off_is_not_pruned(tmp_path: Path) -> None:
    # One reference far more accurate but far denser, one sparser but at chance: neither beats a real network in both.
    study, objective = _reference_study(tmp_path, [(1e-4, 1e6), (2.5, 0.0)])
    trial = study.ask()
    outcome = objective.train_trial(trial)
    try:
        assert len(outcome.attrs[INTERMEDIATES]) == 4 and outcome.attrs[INTERMEDIATES][-1][0] == 4
        assert outcome.attrs[INTERMEDIATES][-1][1] == pytest.approx(outcome.values[0], rel=1e-5)  # last epoch = result
    finally:
        outcome.discard()


def test_front_end_is_the_collapsed_cross_entropy_at_no_weights() -> None:
    assert front_end(Intermediate(3, 2.31, 17.0, 0.1)) == (2.31, 0.0)


def test_a_study_whose_every_trial_is_pruned_ends(tmp_path: Path, monkeypatch) -> None:
    """A broken setup (every network at chance) must not loop forever: max(5, n_trials) pruned trials end the run."""
    monkeypatch.setattr("motune.trial_pruning.chance_level", lambda accuracy, num_classes: True)
    config = StudyConfig.from_dict({**TINY, "train": {"epochs": 4, "front_epochs": 4}})
    # The timeout only bounds the test if the guard is broken: then far more than 5 trials run and it fails.
    study = run_study(config, f"sqlite:///{tmp_path / 'all.db'}", artifact_dir=tmp_path / "art", timeout=120)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.PRUNED] * 5, states
