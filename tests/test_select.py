"""Selection rules on the front (motune.select, `motune select`, `motune export --select`)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

import motune
from motune.select import MaxAccuracyDrop, NothingFits, SelectionError, SizeBudget, networks, rule_from, select
from motune.trials import CONFIG_ATTR

PENALISED = 1000


def network(acc: float, nonzeros: int, lam: float | None = None, kind: str = "weighted_sum", fidelity: str = "front",
            state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    """A hand-made trial with the attributes motune records (values: 1 - accuracy stands in for the cross-entropy)."""
    lam = nonzeros / 1e5 if lam is None and kind == "weighted_sum" else lam
    params = {"l1_weight": lam} if lam is not None else {}
    dists = {"l1_weight": FloatDistribution(0.0, 1.0)} if lam is not None else {}
    attrs = {"kind": kind, "fidelity": fidelity, "val_accuracy": acc, "test_accuracy": acc - 0.01, "nonzeros": nonzeros,
             "penalised_size": PENALISED, "fraction_kept": nonzeros / PENALISED}
    values = [2.3 - 2 * acc, float(nonzeros)] if state == TrialState.COMPLETE else None
    return create_trial(state=state, values=values, params=params, distributions=dists, user_attrs=attrs)


# A front: the most accurate network keeps 900 weights; the knee-ish ones lose a little.
FRONT = [(0.970, 900), (0.968, 700), (0.962, 500), (0.955, 300), (0.930, 150), (0.800, 40), (0.100, 0)]


def make_study(rows=FRONT, storage: str | None = None, extra: list[FrozenTrial] = ()) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"], storage=storage, study_name="front")
    for acc, nz in rows:
        study.add_trial(network(acc, nz))
    for t in extra:
        study.add_trial(t)
    return study


def test_max_accuracy_drop_is_the_sparsest_within_the_drop() -> None:
    study = make_study()
    assert select(study, max_accuracy_drop=0.01).user_attrs["nonzeros"] == 500  # 0.962 >= 0.970 - 0.01
    assert select(study, max_accuracy_drop=0.02).user_attrs["nonzeros"] == 300
    assert select(study, max_accuracy_drop=0.0).user_attrs["nonzeros"] == 900


def test_size_budgets_give_the_most_accurate_network_that_fits() -> None:
    study = make_study()
    assert select(study, max_nonzeros=600).user_attrs["nonzeros"] == 500
    assert select(study, max_nonzeros=500).user_attrs["nonzeros"] == 500  # the bound is inclusive
    assert select(study, max_fraction=0.2).user_attrs["nonzeros"] == 150
    assert select(study, max_fraction=1.0).user_attrs["nonzeros"] == 900


def test_collapsed_networks_and_baselines_are_no_candidates() -> None:
    # 0 weights (collapsed), 2 weights at chance level, an SMGD and a GMP trial: none is a network to choose.
    extra = [network(0.105, 2), network(0.99, 100, kind="smgd"), network(0.99, 100, kind="gmp")]
    study = make_study(extra=extra)
    chosen = networks(study.get_trials())
    assert sorted(t.user_attrs["nonzeros"] for t in chosen) == [40, 150, 300, 500, 700, 900]
    with pytest.raises(NothingFits, match=r"smallest is trial 5 \(40 nonzeros"):
        select(study, max_nonzeros=30)


def test_an_impossible_budget_names_the_smallest_network() -> None:
    study = make_study()
    with pytest.raises(NothingFits) as info:
        select(study, max_fraction=0.01)
    assert info.value.option == "max_fraction" and "no network fits 0.01; the smallest is trial 5" in str(info.value)


@pytest.mark.parametrize(
    "kwargs,option,message",
    [
        ({"max_nonzeros": -1}, "max_nonzeros", ">= 0"),
        ({"max_nonzeros": 2.5}, "max_nonzeros", "whole number"),
        ({"max_fraction": 1.5}, "max_fraction", "[0, 1]"),
        ({"max_fraction": -0.1}, "max_fraction", "[0, 1]"),
        ({"max_accuracy_drop": -0.01}, "max_accuracy_drop", "[0, 1)"),
        ({"max_accuracy_drop": 0.01, "max_nonzeros": 5}, "max_nonzeros", "one rule at a time"),
    ],
)
def test_bad_rule_values_name_the_option(kwargs: dict, option: str, message: str) -> None:
    with pytest.raises(SelectionError) as info:
        rule_from(**kwargs)
    assert info.value.option == option and message in info.value.detail


accuracies = st.floats(0.2, 1.0, allow_nan=False)
fronts = st.lists(st.tuples(accuracies, st.integers(1, PENALISED)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(rows=fronts, drop=st.floats(0.0, 0.2), budget=st.integers(0, PENALISED))
def test_each_rule_returns_the_brute_force_optimum(rows: list[tuple[float, int]], drop: float, budget: int) -> None:
    trials = [network(acc, nz) for acc, nz in rows]
    for number, t in enumerate(trials):
        t.number = number
    best = max(acc for acc, _ in rows)
    chosen = MaxAccuracyDrop(drop)(trials)
    assert chosen.user_attrs["val_accuracy"] >= best - drop - 1e-12
    assert not any(acc >= best - drop - 1e-12 and nz < chosen.user_attrs["nonzeros"] for acc, nz in rows)
    fitting = [(acc, nz) for acc, nz in rows if nz <= budget]
    if not fitting:
        with pytest.raises(NothingFits):
            SizeBudget(max_nonzeros=budget)(trials)
        return
    chosen = SizeBudget(max_nonzeros=budget)(trials)
    assert chosen.user_attrs["nonzeros"] <= budget
    assert chosen.user_attrs["val_accuracy"] == max(acc for acc, _ in fitting)


def test_default_rule_is_the_sampler_knee() -> None:
    study = make_study()
    study.set_user_attr(CONFIG_ATTR, motune.StudyConfig().to_dict())
    knee = motune.knee_trial(study)
    assert knee is not None and select(study).number == knee.number == motune.select(study, rule_from()).number


def test_rule_object_and_keywords_are_exclusive() -> None:
    with pytest.raises(SelectionError, match="not both"):
        select(make_study(), SizeBudget(max_nonzeros=10), max_fraction=0.5)


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def stored_front(tmp_path: Path) -> tuple[Path, str]:
    url = f"sqlite:///{tmp_path / 'front.db'}"
    make_study(storage=url).set_user_attr(CONFIG_ATTR, motune.StudyConfig().to_dict())
    return tmp_path, url


def test_select_command_prints_the_chosen_trial(stored_front, run_motune) -> None:
    work, url = stored_front
    code, out, err = run_motune(work, "select", "--storage", url, "--max-accuracy-drop", "0.01")
    assert code == 0, err
    assert "rule: the sparsest network within 1 pp" in out
    assert "selected: trial 2 (weighted_sum, front fidelity, lambda 5.00e-03): val accuracy 96.20%, test accuracy 95.20%, " \
           "500 of 1000 penalised weights kept (50.00%)" in out
    assert "checkpoint: none stored" in out and "--select --max-accuracy-drop 0.01" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-nonzeros", "10"], "--max-nonzeros: no network fits 10; the smallest is trial 5 (40 nonzeros"),
        (["--max-fraction", "0.001"], "--max-fraction: no network fits 0.001; the smallest is trial 5"),
        (["--max-nonzeros", "-5"], "--max-nonzeros: must be a whole number of weights >= 0, got -5"),
        (["--max-fraction", "1.5"], "--max-fraction: must be a fraction of the penalised weights in [0, 1], got 1.5"),
        (["--max-accuracy-drop", "0.01", "--max-fraction", "0.5"], "--max-fraction: one rule at a time"),
    ],
)
def test_impossible_or_bad_rules_exit_2_with_one_line(stored_front, run_motune, argv: list[str], message: str) -> None:
    work, url = stored_front
    for command in (["select"], ["export", "--out", "out", "--select"]):
        code, out, err = run_motune(work, *command, "--storage", url, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (work / "out").exists()  # nothing written


def test_export_select_writes_only_the_chosen_network(tiny_study, run_motune, tmp_path: Path) -> None:
    study, _, artifact_dir = tiny_study
    url = study.user_attrs["tiny_study"]["storage"]
    chosen = select(study, max_accuracy_drop=0.05)
    code, out, err = run_motune(tmp_path, "export", "--storage", url, "--artifacts", str(artifact_dir), "--select",
                                "--max-accuracy-drop", "0.05", "--out", "picked")
    assert code == 0, err
    assert f"exported trial {chosen.number}" in out
    document = json.loads((tmp_path / "picked" / "selected.json").read_text())
    assert document["rule"].startswith("the sparsest network within 5 pp") and document["row"]["trial"] == chosen.number
    assert sorted(p.name for p in (tmp_path / "picked").rglob("*") if p.is_file()) == \
        ["selected.json", f"trial-{chosen.number:04d}.pt"]
    model = motune.load_model(tmp_path / "picked" / document["row"]["checkpoint"])
    digits = motune.load_dataset("digits", limit=study.user_attrs["tiny_study"]["limit"])
    assert motune.evaluate(model, digits.x_val, digits.y_val)[1] == pytest.approx(chosen.user_attrs["val_accuracy"])
