"""Plotly figures: traces and marking, hover text, hypervolume history, files written offline."""

from __future__ import annotations

import itertools
import os
import random
import stat
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from motune.pareto import hypervolume, nondominated_mask
from motune.plots import (
    accuracy_sparsity_figure,
    front_figure,
    hypervolume_history,
    hypervolume_history_figure,
    pruning_history_figure,
    write_plots,
)
from motune.trials import HISTORY, LEGACY_HISTORY, trial_history


def _knee(study: optuna.Study) -> optuna.trial.FrozenTrial:
    return study.trials[study.user_attrs["tiny_study"]["knee_trial"]]


def _traces(fig: go.Figure) -> dict[str, go.Scatter]:
    return {trace.name: trace for trace in fig.data}


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE,))


@pytest.mark.parametrize("make", [front_figure, accuracy_sparsity_figure])
def test_scatter_figures_mark_front_smgd_full_and_knee(tiny_study, make) -> None:
    study, _, _ = tiny_study
    knee = _knee(study)
    traces = _traces(make(study, knee))
    assert set(traces) == {"all trials", "Pareto front", "SMGD / multi-gradient", "full fidelity", "knee"}
    complete = _complete(study)
    assert sorted(traces["all trials"].customdata) == [t.number for t in complete]
    mask = nondominated_mask(np.array([t.values for t in complete]))
    assert set(traces["Pareto front"].customdata) == {t.number for t, m in zip(complete, mask) if m}
    smgd = [t.number for t in complete if t.user_attrs["kind"] == "smgd"]
    assert smgd and list(traces["SMGD / multi-gradient"].customdata) == smgd
    assert traces["SMGD / multi-gradient"].marker.symbol == "diamond"
    assert list(traces["full fidelity"].customdata) == [t.number for t in complete if t.user_attrs["fidelity"] == "full"]
    star = traces["knee"]
    assert list(star.customdata) == [knee.number] and len(star.x) == len(star.y) == 1
    assert star.marker.symbol == "star"


def test_front_coordinates_and_hover(tiny_study) -> None:
    study, _, _ = tiny_study
    traces = _traces(front_figure(study, _knee(study)))
    all_trials = traces["all trials"]
    by_number = {t.number: t for t in _complete(study)}
    for number, x, y, text in zip(all_trials.customdata, all_trials.x, all_trials.y, all_trials.text):
        trial = by_number[number]
        assert (x, y) == tuple(trial.values)
        assert f"trial {number} " in text and "val accuracy" in text and "nonzeros" in text and "kept" in text
        if trial.user_attrs["kind"] == "weighted_sum":
            assert f"λ = {trial.params['l1_weight']:.1e}" in text
        else:
            assert "λ = -" in text
    texts = " ".join(all_trials.text)
    assert "λ = 1.0e-03" in texts and "λ = 1.0e-04" in texts
    front = traces["Pareto front"]
    assert list(front.x) == sorted(front.x) and front.mode == "lines+markers"


def test_accuracy_figure_axes(tiny_study) -> None:
    study, _, _ = tiny_study
    fig = accuracy_sparsity_figure(study, None, log_x=True)
    assert "knee" not in _traces(fig) and fig.layout.xaxis.type == "log"
    trace = _traces(fig)["all trials"]
    by_number = {t.number: t for t in _complete(study)}
    for number, x, y in zip(trace.customdata, trace.x, trace.y):
        assert (x, y) == (by_number[number].user_attrs["nonzeros"], by_number[number].user_attrs["val_accuracy"])


def test_hypervolume_history_is_non_decreasing_and_ends_at_the_front(tiny_study) -> None:
    study, _, _ = tiny_study
    numbers, volumes = hypervolume_history(study)
    complete = _complete(study)
    assert numbers == [t.number for t in complete]
    assert all(b >= a for a, b in itertools.pairwise(volumes))
    assert 0 < volumes[-1] <= 1.1 * 1.1
    points = np.array([t.values for t in complete])
    norm = (points - points.min(axis=0)) / (points.max(axis=0) - points.min(axis=0))
    assert volumes[-1] == pytest.approx(hypervolume(norm, np.array([1.1, 1.1])))
    trace = _traces(hypervolume_history_figure(study))["hypervolume"]
    assert list(trace.x) == numbers and list(trace.y) == volumes


def test_hypervolume_history_random_order_and_custom_reference() -> None:
    rng = random.Random(0)
    study = optuna.create_study(directions=["minimize", "minimize"])
    for _ in range(40):
        study.add_trial(create_trial(values=[rng.random(), rng.random()]))
    numbers, volumes = hypervolume_history(study, reference=(2.0, 2.0))
    assert len(numbers) == 40 and all(b >= a for a, b in itertools.pairwise(volumes))
    assert volumes[-1] <= 4.0
    empty = optuna.create_study(directions=["minimize", "minimize"])
    assert hypervolume_history(empty) == ([], [])
    hypervolume_history_figure(empty)  # an empty study draws, it does not raise


def _assert_history_lines(fig: go.Figure, history: list[dict]) -> None:
    traces = _traces(fig)
    layers = list(history[0]["nonzeros_per_layer"])
    assert list(traces) == [*layers, "total"]
    for name in layers:
        assert list(traces[name].x) == [r["epoch"] for r in history]
        assert list(traces[name].y) == [r["nonzeros_per_layer"][name] for r in history]
    assert list(traces["total"].y) == [r["nonzeros"] for r in history]


def test_pruning_history_one_line_per_layer(tiny_study) -> None:
    """The history is the trial's JSON artifact, not a user attribute."""
    study, store, _ = tiny_study
    knee = _knee(study)
    assert "history" not in knee.user_attrs
    history = trial_history(knee, store)
    assert len(history) == knee.user_attrs["epochs"] and history[0]["epoch"] == 1
    _assert_history_lines(pruning_history_figure(knee, store), history)
    bare = create_trial(values=[1.0, 1.0])
    assert len(pruning_history_figure(bare).data) == 0  # a note, not an error
    unread = pruning_history_figure(knee)  # no store given: a note saying so, not an error
    assert len(unread.data) == 0 and "artifact store" in unread.layout.annotations[0].text


def test_pruning_history_of_an_old_study_attr(tiny_study) -> None:
    """Studies made before the history became an artifact keep it in the ``history`` user attribute."""
    study, store, _ = tiny_study
    knee = _knee(study)
    history = trial_history(knee, store)
    attrs = {k: v for k, v in knee.user_attrs.items() if k != HISTORY}
    old = create_trial(values=knee.values, params=knee.params, distributions=knee.distributions,
                       user_attrs={**attrs, LEGACY_HISTORY: history})
    assert trial_history(old) == history
    _assert_history_lines(pruning_history_figure(old), history)


def test_pruning_history_of_a_missing_artifact(tiny_study, tmp_path: Path) -> None:
    study, _, _ = tiny_study
    knee = _knee(study)
    fig = pruning_history_figure(knee, FileSystemArtifactStore(str(tmp_path)))  # another store: the file is not there
    assert len(fig.data) == 0 and "cannot be read" in fig.layout.annotations[0].text


def test_write_plots_offline_html(tiny_study, tmp_path: Path) -> None:
    study, _, _ = tiny_study
    paths = write_plots(study, tmp_path / "plots", _knee(study), tiny_study.artifact_store)
    names = ["front.html", "accuracy_vs_nonzeros.html", "hypervolume.html", "pruning_history.html"]
    assert '"name":"total"' in (tmp_path / "plots" / "pruning_history.html").read_text()  # the history was read
    assert [p.name for p in paths] == names
    assert (tmp_path / "plots" / "plotly.min.js").stat().st_size > 1_000_000
    for path in paths:
        html = path.read_text()
        assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted([*names, "plotly.min.js"])
    with pytest.warns(UserWarning, match="no knee"):
        without = write_plots(study, tmp_path / "plain", None)
    assert [p.name for p in without] == names[:3]


def test_figures_of_a_study_without_attributes() -> None:
    """Trials written by something else (no user attrs) still plot."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    dist = {"l1_weight": FloatDistribution(0.0, 1.0)}
    for f1, f2 in [(0.1, 3.0), (0.2, 1.0), (0.3, 2.0)]:
        study.add_trial(create_trial(values=[f1, f2], params={"l1_weight": f1 / 10}, distributions=dist))
    traces = _traces(front_figure(study, study.trials[1]))
    assert set(traces) == {"all trials", "Pareto front", "knee"}
    assert "λ = 2.0e-02" in traces["knee"].text[0]
    assert set(_traces(accuracy_sparsity_figure(study)).keys()) <= {"all trials", "Pareto front", "knee"}
    front_figure(optuna.create_study(directions=["minimize", "minimize"]), None)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_permissions_of_a_plain_open(tiny_study, tmp_path: Path, umask: int) -> None:
    """Not 0600 (what a tempfile would give): 0666 less the umask, like ``open(path, "w")``."""
    study, _, _ = tiny_study
    out = tmp_path / "plots"
    out.mkdir()
    previous = os.umask(umask)
    try:
        (out / "front.html").write_text("an older plot")  # replaced: gets the new file's mode
        paths = write_plots(study, out, _knee(study))
        (out / "reference.txt").write_text("plain open()")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((out / "reference.txt").stat().st_mode) == expected
    for path in [*paths, out / "plotly.min.js"]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
