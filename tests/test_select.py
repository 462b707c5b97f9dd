"""Selection rules on a hand-made front: each returns the optimum; bad input exits 2 with one line."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import motune
from motune.config import StudyConfig
from motune.selection import SelectionError, candidates, select
from motune.study import knee_trial
from motune.trials import CONFIG_ATTR, FIDELITY, KIND, PARAM

SIZE = 1000
# (λ, val accuracy, nonzeros): trial numbers follow this order.
FRONT = [
    (0.0, 0.960, 1000),
    (0.001, 0.958, 600),
    (0.003, 0.952, 300),  # sparsest within 1 pp of the best (0.960 - 0.952 = 0.8 pp)
    (0.01, 0.940, 120),
    (0.03, 0.900, 40),
    (0.1, 0.500, 5),
]


def _trial(lam: float, acc: float, nz: int, kind: str = "weighted_sum") -> optuna.trial.FrozenTrial:
    attrs = {KIND: kind, FIDELITY: "front", "val_accuracy": acc, "test_accuracy": acc - 0.01, "nonzeros": nz,
             "penalised_size": SIZE, "fraction_kept": nz / SIZE}
    params, dists = ({PARAM: lam}, {PARAM: FloatDistribution(0.0, 1.0)}) if kind == "weighted_sum" else ({}, {})
    return create_trial(values=[1.0 - acc, nz / 10], params=params, distributions=dists, user_attrs=attrs)


def _fill(study: optuna.Study) -> optuna.Study:
    for lam, acc, nz in FRONT:
        study.add_trial(_trial(lam, acc, nz))
    # A baseline more accurate and smaller than everything: the rules must not pick it.
    study.add_trial(_trial(0.0, 0.99, 10, kind="smgd"))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.set_user_attr(CONFIG_ATTR, StudyConfig().to_dict())
    return study


@pytest.fixture()
def study() -> optuna.Study:
    return _fill(optuna.create_study(directions=["minimize", "minimize"]))


def test_candidates_are_the_weighted_sum_trials(study: optuna.Study) -> None:
    assert [t.number for t in candidates(study.trials)] == list(range(len(FRONT)))


def test_max_accuracy_drop_picks_the_sparsest_within_the_drop(study: optuna.Study) -> None:
    assert select(study, max_accuracy_drop=0.01).number == 2
    assert select(study, max_accuracy_drop=0.0).number == 0
    assert select(study, max_accuracy_drop=0.03).number == 3
    assert select(study, max_accuracy_drop=1.0).number == 5


def test_size_budgets_pick_the_most_accurate_that_fits(study: optuna.Study) -> None:
    assert select(study, max_nonzeros=300).number == 2
    assert select(study, max_nonzeros=299).number == 3
    assert select(study, max_nonzeros=5).number == 5
    assert select(study, max_fraction=0.05).number == 4
    assert select(study, max_fraction=1.0).number == 0
    assert motune.select(study, max_fraction=0.6).number == 1


def test_no_rule_is_the_knee(study: optuna.Study) -> None:
    knee = knee_trial(study, StudyConfig())
    assert knee is not None and select(study).number == knee.number


@pytest.mark.parametrize(
    ("rules", "named"),
    [
        ({"max_nonzeros": 4}, "max_nonzeros"),
        ({"max_fraction": 0.001}, "max_fraction"),
        ({"max_nonzeros": -1}, "max_nonzeros"),
        ({"max_fraction": 1.5}, "max_fraction"),
        ({"max_accuracy_drop": float("nan")}, "max_accuracy_drop"),
        ({"max_accuracy_drop": 0.01, "max_fraction": 0.1}, "max_accuracy_drop and max_fraction"),
    ],
)
def test_impossible_or_bad_rules_raise_naming_the_option(study: optuna.Study, rules: dict, named: str) -> None:
    with pytest.raises(SelectionError) as info:
        select(study, **rules)
    assert info.value.option == named


def test_impossible_budget_names_the_smallest_network(study: optuna.Study) -> None:
    with pytest.raises(SelectionError, match="smallest is trial 5 with 5 nonzero weights"):
        select(study, max_nonzeros=4)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture()
def stored(tmp_path: Path) -> Path:
    _fill(optuna.create_study(directions=["minimize", "minimize"], storage=f"sqlite:///{tmp_path}/s.db", study_name="digits"))
    return tmp_path


def test_cli_select_prints_the_chosen_trial(stored: Path, run_motune) -> None:
    code, out, err = run_motune(stored, "select", "--storage", "sqlite:///s.db", "--max-nonzeros", "300")
    assert code == 0 and err == ""
    assert "trial 2 (weighted_sum" in out and "val accuracy 95.20%" in out and "300 of 1000" in out
    assert "checkpoint" in out and "test split is not used" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--max-nonzeros", "3"], "--max-nonzeros: no network fits 3; the smallest is trial 5"),
        (["--max-fraction", "2"], "--max-fraction: must be a fraction in [0, 1]"),
        (["--max-accuracy-drop", "-0.1"], "--max-accuracy-drop: must be a number >= 0"),
        (["--max-nonzeros", "10", "--max-fraction", "0.5"], "--max-nonzeros and --max-fraction: give at most one"),
    ],
)
def test_cli_bad_rules_exit_2_with_one_line(stored: Path, run_motune, argv: list[str], named: str) -> None:
    code, out, err = run_motune(stored, "select", "--storage", "sqlite:///s.db", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err


def test_cli_export_select_impossible_budget_exits_2_and_writes_nothing(stored: Path, run_motune) -> None:
    code, _, err = run_motune(stored, "export", "--storage", "sqlite:///s.db", "--out", "out", "--max-nonzeros", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--max-nonzeros" in err
    assert not (stored / "out").exists()
