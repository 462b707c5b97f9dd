"""optuna-dashboard: trial notes, motune's figures on the study, the history artifact, and running without it."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard (the motune[dashboard] extra) is not installed")
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects  # what the dashboard server reads
from optuna_dashboard._note import get_note_from_system_attrs

from motune.config import StudyConfig
from motune.dashboard import FIGURES, DashboardCallback, dashboard_callbacks, trial_note
from motune.patience import patient
from motune.plots import pruning_history_figure
from motune.study import run_study
from motune.trials import CHECKPOINT, CHECKPOINT_BYTES, HISTORY, LEGACY_HISTORY, PRUNE_REASON, trial_history

# λ = 0 and 1 first (1, the l1 norm alone, collapses: pruned after 2 epochs), one SMGD baseline;
# seconds on 300 digits.
SMALL = {
    "study": {"name": "dash", "n_trials": 3, "baselines": ["smgd"], "full_fidelity": False,
              "start_weights": [0.0, 1.0], "continuation": False},
    "data": {"limit": 300},
    "train": {"epochs": 5, "front_epochs": 5},
}


def _note(study: optuna.Study, trial: FrozenTrial) -> str:
    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial._trial_id)["body"]


def _figures(study: optuna.Study) -> dict[str, dict]:
    stored = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    return {graph_id: json.loads(text) for graph_id, text in stored.items()}


def _trace(figure: dict, name: str) -> dict:
    return next(t for t in figure["data"] if t.get("name") == name)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, Path, list[tuple[int, dict]]]:
    """A real motune run with the dashboard callback; the stored figures seen after each COMPLETE trial."""
    tmp = tmp_path_factory.mktemp("dash")
    seen: list[tuple[int, dict]] = []

    def after(study: optuna.Study, trial: FrozenTrial) -> None:  # runs after the dashboard callback
        if trial.state == TrialState.COMPLETE:
            seen.append((trial.number, _figures(study)))

    art = tmp / "art"
    study = run_study(StudyConfig.from_dict(SMALL), f"sqlite:///{tmp / 'dash.db'}", artifact_dir=art,
                      callbacks=[DashboardCallback(artifact_dir=art), after])
    return study, art, seen


def test_a_completed_trial_has_a_note_with_its_numbers_and_per_layer_table(small_run) -> None:
    study, art, _ = small_run
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for t in complete:
        a = t.user_attrs
        note = _note(study, t)
        assert note == trial_note(t, str(art))
        assert note.startswith(f"## Trial {t.number}: {a['kind']}, {a['fidelity']} fidelity")
        if a["kind"] == "weighted_sum":
            assert f"| λ (l1_weight) | {t.params['l1_weight']:.3e} |" in note
        else:
            assert "| λ (l1_weight) | - (multi-gradient: no λ) |" in note and "mean α" in note
        assert f"| val accuracy | {a['val_accuracy']:.2%} |" in note
        assert f"| test accuracy | {a['test_accuracy']:.2%} |" in note
        assert f"| nonzeros | {a['nonzeros']:,} of {a['penalised_size']:,} |" in note
        assert f"| fraction kept | {a['fraction_kept']:.2%} |" in note
        assert f"| cross-entropy (val) | {t.values[0]:.4f} |" in note
        assert "### Nonzeros per layer\n\n| layer | nonzeros |\n|---|---:|\n" in note
        for layer, n in a["nonzeros_per_layer"].items():
            assert f"| `{layer}` | {n:,} |" in note
        assert f"Artifact `{a[CHECKPOINT]}` ({a[CHECKPOINT_BYTES]:,} bytes" in note
        assert f"FileSystemArtifactStore({str(art)!r})" in note and f'motune.load_model("trial-{t.number:04d}.pt")' in note
        assert f"artifact `{a[HISTORY]}`" in note


def test_a_pruned_trial_has_a_note_with_the_reason(small_run) -> None:
    study, _, _ = small_run
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, [(t.number, t.state.name, t.params) for t in study.trials]
    for t in pruned:
        note = _note(study, t)
        assert "(pruned)" in note and f"**Pruned:** {t.user_attrs[PRUNE_REASON]}" in note
        assert "### Intermediate values" in note and "| epoch | cross-entropy | l1 | accuracy |" in note
    failed = study.get_trials(states=(TrialState.FAIL, TrialState.WAITING))
    assert all(_note(study, t) == "" for t in failed)  # only COMPLETE and PRUNED trials get a note


def test_the_figures_are_stored_and_refreshed_after_each_completed_trial(small_run) -> None:
    study, _, seen = small_run
    assert [n for n, _ in seen] == [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))]
    for i, (_, figures) in enumerate(seen):
        assert set(figures) == set(FIGURES)
        assert len(_trace(figures["motune-front"], "all trials")["x"]) == i + 1  # the new trial is in the stored figure
        assert len(_trace(figures["motune-accuracy-vs-nonzeros"], "all trials")["x"]) == i + 1
    assert seen[0][1] != seen[1][1] != seen[2][1]
    final = _figures(study)
    front = final["motune-front"]
    assert "Pareto front" in front["layout"]["title"]["text"]
    assert not front["layout"].get("template")  # plotly's 7 kB template is not stored at every refresh
    numbers = [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(_trace(front, "all trials")["customdata"]) == numbers


def test_the_history_is_an_artifact_not_a_user_attribute(small_run) -> None:
    study, art, _ = small_run
    store = FileSystemArtifactStore(str(art))
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert LEGACY_HISTORY not in t.user_attrs
        assert len(json.dumps(t.user_attrs)) < 1500  # the trial page stays readable
        history = trial_history(t, store)
        assert [r["epoch"] for r in history] == list(range(1, t.user_attrs["epochs"] + 1))
        assert history[-1]["nonzeros"] == t.user_attrs["nonzeros"]
        assert history[-1]["nonzeros_per_layer"] == t.user_attrs["nonzeros_per_layer"]
        assert (art / t.user_attrs[HISTORY]).is_file()
        fig = pruning_history_figure(t, store)
        assert [tr.name for tr in fig.data] == [*t.user_attrs["nonzeros_per_layer"], "total"]
        assert list(fig.data[-1].y) == [r["nonzeros"] for r in history]


def _add_trials(study: optuna.Study) -> None:
    dist = {"l1_weight": FloatDistribution(0.0, 1.0)}
    attrs = {"kind": "weighted_sum", "fidelity": "front", "val_accuracy": 0.9, "nonzeros": 10, "penalised_size": 40,
             "fraction_kept": 0.25, "nonzeros_per_layer": {"fc.weight": 10}}
    study.add_trial(create_trial(values=[0.3, 2.0], params={"l1_weight": 0.01}, distributions=dist, user_attrs=attrs))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"l1_weight": 0.5}, distributions=dist,
                                 user_attrs={"kind": "weighted_sum", "fidelity": "front", PRUNE_REASON: "collapsed",
                                             "intermediates": [[1, 2.3, 0.0, 0.1]]}))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_notes_and_figures_through_motune_patient_storage(tmp_path: Path, kind: str) -> None:
    if kind == "sqlite":
        base = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'n.db'}")
    else:
        base = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "n.log")))
    study = optuna.create_study(storage=patient(base), directions=["minimize", "minimize"], study_name="n")
    _add_trials(study)
    callback = DashboardCallback()
    for t in study.get_trials():
        callback(study, t)
    again = optuna.load_study(study_name="n", storage=base)  # another process's view, without the wrapper
    complete, pruned = again.get_trials()
    assert "| `fc.weight` | 10 |" in _note(again, complete) and "**Pruned:** collapsed" in _note(again, pruned)
    assert set(_figures(again)) == set(FIGURES)
    callback(study, complete)  # written again: the same note, not a second one
    assert _note(again, complete).count("## Trial 0") == 1


def test_a_dashboard_error_is_logged_and_the_trial_stands(tmp_path: Path, monkeypatch, caplog) -> None:
    import optuna_dashboard

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(optuna_dashboard, "save_note", broken)
    study = optuna.create_study(directions=["minimize", "minimize"])
    _add_trials(study)
    with caplog.at_level(logging.WARNING, logger="motune.dashboard"):
        DashboardCallback()(study, study.trials[0])  # does not raise
    assert "trial 0 not written: OSError: disk full" in caplog.text


def _run_two_trials(tmp_path: Path, run_motune, name: str) -> optuna.Study:
    """``motune run`` on a two-trial, one-epoch digits study named ``name`` in ``tmp_path``; the study."""
    (tmp_path / "s.toml").write_text(
        f'[study]\nname = "{name}"\nn_trials = 2\nbaselines = []\nfull_fidelity = false\nprune = false\n'
        "[data]\nlimit = 200\n[train]\nepochs = 1\nfront_epochs = 1\n"
    )
    code, _, err = run_motune(tmp_path, "run", "s.toml", "--quiet")
    assert code == 0, err
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / f'{name}.db'}")


def test_without_optuna_dashboard_a_run_works_and_writes_no_notes(tmp_path: Path, monkeypatch, run_motune) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # `import optuna_dashboard` raises ImportError
    assert dashboard_callbacks() == []
    study = _run_two_trials(tmp_path, run_motune, "bare")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert not [k for k in study._storage.get_study_system_attrs(study._study_id) if k.startswith("dashboard:")]


def test_motune_run_writes_notes_and_figures(tmp_path: Path, run_motune) -> None:
    study = _run_two_trials(tmp_path, run_motune, "cli")
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert _note(study, t).startswith(f"## Trial {t.number}: weighted_sum")
        assert f"FileSystemArtifactStore({str(tmp_path / 'cli-artifacts')!r})" in _note(study, t)  # an absolute path
    assert set(_figures(study)) == set(FIGURES)
