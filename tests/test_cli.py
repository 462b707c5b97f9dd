"""The motune command end to end on digits, and every bad input -> exit 2 with the key named."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import motune
from motune.cli import main

STUDIES = Path(__file__).resolve().parents[1] / "studies"

SMALL = """
[study]
name = "tiny"
n_trials = 10
baselines = ["smgd"]

[data]
dataset = "digits"

[train]
epochs = 6
front_epochs = 3
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory):
    """One small study run through the CLI, shared by the tests that inspect it."""
    work = tmp_path_factory.mktemp("cli")
    (work / "tiny.toml").write_text(SMALL)
    with pytest.MonkeyPatch.context() as patch:  # module scope: the run_motune fixture is per test
        patch.chdir(work)
        code = main(["run", "tiny.toml", "--quiet"])
    return work, code


def test_run_creates_study_with_front_knee_and_checkpoints(finished_run) -> None:
    work, code = finished_run
    assert code == 0
    assert (work / "tiny.db").is_file() and any((work / "tiny-artifacts").iterdir())


def test_status_reports_states_front_knee_hypervolume(finished_run, run_motune) -> None:
    work, _ = finished_run
    code, out, _ = run_motune(work, "status", "--storage", "sqlite:///tiny.db")
    assert code == 0
    assert "study 'tiny'" in out and "complete" in out and "hypervolume" in out
    assert "knee: trial" in out and "*" in out


def test_export_writes_table_and_loadable_checkpoints(finished_run, run_motune) -> None:
    work, _ = finished_run
    code, _, err = run_motune(work, "export", "--storage", "sqlite:///tiny.db", "--out", "exported")
    assert code == 0, err
    out_dir = work / "exported"
    rows = list(csv.DictReader((out_dir / "pareto.csv").open()))
    expected = {"trial", "kind", "l1_weight", "cross_entropy", "l1", "val_accuracy", "nonzeros", "fraction_kept", "is_knee"}
    assert expected <= set(rows[0])
    data = json.loads((out_dir / "pareto.json").read_text())
    assert sum(1 for r in data["rows"] if r["is_knee"]) == 1
    knee = next(r for r in data["rows"] if r["is_knee"])
    for row in data["rows"]:  # each checkpoint's size is reported, and it is the exported file's
        assert row["checkpoint_bytes"] == (out_dir / row["checkpoint"]).stat().st_size > 0
    model = motune.load_model(out_dir / knee["checkpoint"])
    digits = motune.load_dataset("digits")
    _, accuracy = motune.evaluate(model, digits.x_val, digits.y_val)
    assert accuracy == pytest.approx(knee["val_accuracy"], abs=1e-9)


def test_plot_writes_figures_with_expected_traces(finished_run, run_motune) -> None:
    work, _ = finished_run
    code, _, err = run_motune(work, "plot", "--storage", "sqlite:///tiny.db", "--out", "plots")
    assert code == 0, err
    front = (work / "plots" / "front.html").read_text()
    for name in ("Pareto front", "knee", "SMGD"):
        assert name in front
    for name in ("accuracy_vs_nonzeros.html", "hypervolume.html", "pruning_history.html"):
        assert (work / "plots" / name).is_file()


def test_run_again_resumes_without_new_trials_when_converged(finished_run, run_motune) -> None:
    work, _ = finished_run
    before = sqlite3.connect(work / "tiny.db").execute("select count(*) from trials").fetchone()[0]
    code, out, _ = run_motune(work, "run", "tiny.toml", "--quiet")
    after = sqlite3.connect(work / "tiny.db").execute("select count(*) from trials").fetchone()[0]
    assert code == 0 and before == after and "knee: trial" in out


def test_resume_with_a_different_config_is_refused_and_changes_nothing(finished_run, run_motune) -> None:
    work, _ = finished_run
    (work / "other.toml").write_text(SMALL.replace("front_epochs = 3", "front_epochs = 2"))
    db = (work / "tiny.db").read_bytes()
    code, _, err = run_motune(work, "run", "other.toml", "--storage", "sqlite:///tiny.db")
    assert code == 2 and "different config" in err and "--study" in err
    assert (work / "tiny.db").read_bytes() == db


@pytest.mark.parametrize(
    "toml,message",
    [
        ("[train]\nlrr = 1\n", "train.lrr: unknown key"),
        ("[train]\nepochs = 'x'\n", "train.epochs: must be of type int"),
        ("[study]\nn_trials = -3\n", "study.n_trials"),
    ],
)
def test_bad_config_exit_2_and_nothing_written(tmp_path: Path, run_motune, toml: str, message: str) -> None:
    (tmp_path / "bad.toml").write_text(toml)
    code, _, err = run_motune(tmp_path, "run", "bad.toml")
    assert code == 2 and message in err
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--n-trials", "0"], "--n-trials"),
        (["run", "--storage", "notaurl"], "not a storage URL"),
        (["run", "--storage", "postgresql://u:secret@127.0.0.1:1/x"], "cannot open"),
        (["status", "--storage", "sqlite:///missing.db"], "no such database file"),
        (["run", "missing.toml"], "no such config file"),
        (["run", "--data-dir", "/nonexistent", str(STUDIES / "fashion_mnist_lenet5.toml")], "/nonexistent"),
    ],
)
def test_bad_arguments_exit_2_with_message(tmp_path: Path, run_motune, argv: list[str], message: str) -> None:
    code, _, err = run_motune(tmp_path, *argv)
    assert code == 2 and message in err
    assert "secret" not in err  # passwords are masked
    assert not list(tmp_path.glob("*.db"))


def test_console_script_usage_errors_have_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    help_ = subprocess.run([sys.executable, "-m", "motune.cli", "run", "--help"], capture_output=True, text=True, env=env)
    assert help_.returncode == 0 and "--n-trials" in help_.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "motune.cli", "run", "--storage", "nope"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "not a storage URL" in bad.stderr
    unknown = subprocess.run([sys.executable, "-m", "motune.cli", "frobnicate"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


def test_the_default_digits_study_prunes_a_trial_and_continues_its_knee(tmp_path: Path, monkeypatch) -> None:
    """`motune run` with no config (issue 11): at least one pruned trial; the knee's retrain continues its front network."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--quiet"]) == 0
    study = optuna.load_study(study_name="digits", storage="sqlite:///digits.db")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states, states
    knee = motune.knee_trial(study)
    config = motune.StudyConfig()
    assert knee is not None and knee.user_attrs["fidelity"] == "full" and knee.user_attrs["epochs"] == config.train.epochs
    parent = study.trials[knee.user_attrs["warm_start_from"]]  # continued from the knee's front network
    assert parent.params["l1_weight"] == knee.params["l1_weight"] and parent.user_attrs["fidelity"] == "front"
    assert config.finetune_epochs == config.train.epochs // 3 > 0
