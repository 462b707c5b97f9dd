"""Export of the Pareto set: files and columns, nondominance, checkpoints that reproduce, safety."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from motune import evaluate, load_dataset, load_model
from motune.export import COLUMNS, ExportError, export_pareto, pareto_rows


def _knee(study: optuna.Study) -> optuna.trial.FrozenTrial:
    return study.trials[study.user_attrs["tiny_study"]["knee_trial"]]


def _dominated(p: np.ndarray, q: np.ndarray) -> bool:
    """Is ``p`` dominated by ``q`` (both minimised)?"""
    return bool(np.all(q <= p) and np.any(q < p))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_export_files_columns_and_knee(tiny_study, tmp_path: Path) -> None:
    study, store, _ = tiny_study
    knee = _knee(study)
    out = tmp_path / "export"
    summary = export_pareto(study, out, store, knee)

    assert summary.csv_path == (out / "pareto.csv").resolve() and summary.csv_path.is_file()
    assert summary.json_path == (out / "pareto.json").resolve() and summary.json_path.is_file()
    with open(summary.csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        csv_rows = list(reader)
    document = json.loads(summary.json_path.read_text())
    assert document["study"] == study.study_name and document["knee_trial"] == knee.number
    rows = document["rows"]
    assert rows == pareto_rows(study, knee)
    assert summary.rows == len(rows) == len(csv_rows) >= 2
    assert all(tuple(row) == COLUMNS for row in rows)
    assert [int(r["trial"]) for r in csv_rows] == [r["trial"] for r in rows]
    # sorted by cross-entropy; exactly one knee, the one given
    assert [r["cross_entropy"] for r in rows] == sorted(r["cross_entropy"] for r in rows)
    assert [r["trial"] for r in rows if r["is_knee"]] == [knee.number]
    assert [r["trial"] for r in csv_rows if r["is_knee"] == "True"] == [str(knee.number)]
    # λ for weighted sums, None (empty cell) for SMGD; every trial here has a checkpoint
    for row, cell in zip(rows, csv_rows):
        trial = study.trials[row["trial"]]
        if row["kind"] == "weighted_sum":
            assert row["l1_weight"] == trial.params["l1_weight"]
        else:
            assert row["l1_weight"] is None and cell["l1_weight"] == ""
        assert row["checkpoint"] == f"checkpoints/trial-{row['trial']:04d}.pt"
        assert (out / row["checkpoint"]).is_file()
    assert sorted(summary.checkpoints) == sorted((out / r["checkpoint"]).resolve() for r in rows)
    # no staging left behind, nothing else written
    expected = {"pareto.csv", "pareto.json", "checkpoints"} | {r["checkpoint"] for r in rows}
    assert _tree(out) == expected


def test_rows_are_the_nondominated_trials_plus_knee(tiny_study) -> None:
    study, _, _ = tiny_study
    knee = _knee(study)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    values = {t.number: np.array(t.values) for t in complete}
    nondominated = {n for n, p in values.items() if not any(_dominated(p, q) for q in values.values())}
    rows = pareto_rows(study, knee)
    assert {r["trial"] for r in rows} == nondominated | {knee.number}
    assert len(nondominated) < len(complete)  # the barely trained trial is dominated
    failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
    assert failed and not {r["trial"] for r in rows} & set(failed)
    # without a knee: no is_knee, the nondominated trials only
    plain = pareto_rows(study, None)
    assert {r["trial"] for r in plain} == nondominated and not any(r["is_knee"] for r in plain)


def test_exported_checkpoints_reproduce_recorded_accuracy(tiny_study, tmp_path: Path) -> None:
    study, store, _ = tiny_study
    meta = study.user_attrs["tiny_study"]
    data = load_dataset(meta["dataset"], limit=meta["limit"])
    out = tmp_path / "export"
    export_pareto(study, out, store, _knee(study))
    rows = json.loads((out / "pareto.json").read_text())["rows"]
    for row in rows:
        model = load_model(out / row["checkpoint"])
        cross_entropy, accuracy = evaluate(model, data.x_val, data.y_val)
        assert accuracy == pytest.approx(row["val_accuracy"], abs=1e-6), row["trial"]
        assert cross_entropy == pytest.approx(row["cross_entropy"], rel=1e-5), row["trial"]
        assert row["val_accuracy"] == study.trials[row["trial"]].user_attrs["val_accuracy"]


def test_nothing_is_written_outside_out_dir_and_reexport_replaces(tiny_study, tmp_path: Path) -> None:
    study, store, artifact_dir = tiny_study
    artifacts_before = _tree(artifact_dir)
    out = tmp_path / "a" / "b" / "export"
    export_pareto(study, out, store, _knee(study))
    first = _tree(out)
    (out / "notes.txt").write_text("mine")  # a user's file survives a re-export
    export_pareto(study, out, store, _knee(study))
    assert _tree(out) == first | {"notes.txt"}
    assert _tree(tmp_path) == {"a", "a/b", "a/b/export"} | {f"a/b/export/{p}" for p in first | {"notes.txt"}}
    assert _tree(artifact_dir) == artifacts_before


def test_missing_artifact_fails_cleanly_naming_the_trial(tiny_study, tmp_path: Path) -> None:
    study, _, _ = tiny_study
    empty = tmp_path / "empty-store"
    empty.mkdir()
    out = tmp_path / "export"
    out.mkdir()
    (out / "pareto.csv").write_text("old export\n")
    first = pareto_rows(study, _knee(study))[0]["trial"]
    with pytest.raises(ExportError, match=rf"trial {first}\b.*checkpoint"):
        export_pareto(study, out, FileSystemArtifactStore(empty), _knee(study))
    assert _tree(out) == {"pareto.csv"}  # nothing partial, no staging left
    assert (out / "pareto.csv").read_text() == "old export\n"


def test_corrupt_artifact_is_reported(tiny_study, tmp_path: Path) -> None:
    study, _, artifact_dir = tiny_study
    copy = tmp_path / "store"
    shutil.copytree(artifact_dir, copy)
    victim = pareto_rows(study, _knee(study))[-1]["trial"]
    (copy / study.trials[victim].user_attrs["checkpoint"]).write_bytes(b"not a checkpoint")
    out = tmp_path / "export"
    with pytest.raises(ExportError, match=rf"trial {victim}\b.*not a usable checkpoint"):
        export_pareto(study, out, FileSystemArtifactStore(copy), _knee(study))
    assert _tree(out) == set()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_checkpoint_dir_linked_outside_is_refused(tiny_study, tmp_path: Path) -> None:
    study, store, _ = tiny_study
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "export"
    out.mkdir()
    (out / "checkpoints").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ExportError, match="outside"):
        export_pareto(study, out, store, _knee(study))
    assert _tree(outside) == set()
    assert _tree(out) == {"checkpoints"}


def _synthetic_study() -> optuna.Study:
    """No training: a front, a dominated knee, an SMGD trial without checkpoint, an infinite one."""
    study = optuna.create_study(directions=["minimize", "minimize"], study_name="synthetic")
    dist = {"l1_weight": FloatDistribution(0.0, 1.0)}
    points = [(0.1, 9.0, 0.0), (0.2, 5.0, 1e-4), (0.5, 1.0, 1e-3), (0.3, 6.0, 1e-4)]
    for f1, f2, lam in points:
        study.add_trial(
            create_trial(
                values=[f1, f2],
                params={"l1_weight": lam},
                distributions=dist,
                user_attrs={"kind": "weighted_sum", "fidelity": "front", "val_accuracy": 0.9, "nonzeros": 10},
            )
        )
    study.add_trial(create_trial(values=[0.4, 2.0], user_attrs={"kind": "smgd", "fidelity": "front"}))
    study.add_trial(create_trial(values=[float("inf"), 0.0], user_attrs={"kind": "smgd"}))
    return study


def test_knee_is_included_even_when_dominated(tmp_path: Path) -> None:
    study = _synthetic_study()
    knee = study.trials[3]  # (0.3, 6.0) is dominated by (0.2, 5.0)
    rows = pareto_rows(study, knee)
    assert [r["trial"] for r in rows] == [0, 1, 3, 4, 2]
    assert [r["is_knee"] for r in rows] == [False, False, True, False, False]
    smgd = rows[3]
    assert smgd["kind"] == "smgd" and smgd["l1_weight"] is None and smgd["checkpoint"] is None
    assert smgd["val_accuracy"] is None and smgd["nonzeros"] is None
    # no checkpoints at all: only the two index files are written
    summary = export_pareto(study, tmp_path / "out", FileSystemArtifactStore(tmp_path), knee)
    assert summary.checkpoints == [] and summary.rows == 5
    assert _tree(tmp_path / "out") == {"pareto.csv", "pareto.json"}


def test_knee_from_another_study_is_rejected() -> None:
    study = _synthetic_study()
    stranger = create_trial(values=[0.0, 0.0])
    stranger.number = 99
    with pytest.raises(ExportError, match="knee trial 99"):
        pareto_rows(study, stranger)
    with pytest.raises(ExportError, match="knee trial 5 has no finite"):
        pareto_rows(study, study.trials[5])


def test_artifact_id_escaping_the_store_is_an_export_error(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], study_name="hostile")
    study.add_trial(create_trial(values=[0.1, 1.0], user_attrs={"kind": "smgd", "checkpoint": "../../etc/passwd"}))
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    with pytest.raises(ExportError, match=r"trial 0\b"):
        export_pareto(study, tmp_path / "out", FileSystemArtifactStore(store_dir), None)
    assert _tree(tmp_path / "out") == set()
    # the stored string never becomes a file name: the row points at checkpoints/trial-0000.pt
    assert pareto_rows(study, None)[0]["checkpoint"] == "checkpoints/trial-0000.pt"


# ------------------------------------------------------------- unwritable output


def _cli_storage(tiny_study, tmp_path: Path) -> str:
    """A copy of the tiny study's database with a stored motune config, so ``motune export`` opens it."""
    from motune.config import StudyConfig
    from motune.study import CONFIG_ATTR

    study, _, _ = tiny_study
    source = study.user_attrs["tiny_study"]["storage"].removeprefix("sqlite:///")
    copy = tmp_path / "db" / "study.db"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    url = f"sqlite:///{copy}"
    optuna.load_study(study_name=study.study_name, storage=url).set_user_attr(CONFIG_ATTR, StudyConfig().to_dict())
    return url


def test_cli_export_under_a_regular_file_exits_2_with_one_line(tiny_study, tmp_path: Path, capsys) -> None:
    from motune.cli import main

    study, _, artifact_dir = tiny_study
    url = _cli_storage(tiny_study, tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory\n")
    before = _tree(tmp_path)
    target = blocker / "out"
    argv = ["export", "--storage", url, "--study", study.study_name, "--artifacts", str(artifact_dir)]
    code = main([*argv, "--out", str(target)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "exported" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("motune: error: cannot write the export to ")
    assert str(target) in lines[0] and f"{blocker} is a file" in lines[0]
    assert "choose an output directory" in lines[0]
    assert _tree(tmp_path) == before and blocker.read_text() == "not a directory\n"

    # The same command with a usable --out works: the failure was the path, not the study.
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "pareto.csv").is_file()


def test_directory_in_the_way_fails_before_anything_is_replaced(tiny_study, tmp_path: Path) -> None:
    study, store, _ = tiny_study
    out = tmp_path / "export"
    export_pareto(study, out, store, _knee(study))
    before = {p: (out / p).read_bytes() for p in _tree(out) if (out / p).is_file()}
    (out / "pareto.csv").unlink()
    (out / "pareto.csv").mkdir()  # e.g. a user's folder of that name
    del before["pareto.csv"]
    with pytest.raises(ExportError, match=r"pareto\.csv is a directory"):
        export_pareto(study, out, store, _knee(study))
    assert {p: (out / p).read_bytes() for p in before} == before  # checkpoints and JSON untouched
    assert not [p for p in _tree(out) if ".motune-export-" in p]


def test_os_error_while_publishing_is_an_export_error(tiny_study, tmp_path: Path, monkeypatch) -> None:
    """A failing rename (disk full, a read-only mount) is one ExportError; the old index stays whole."""
    study, store, _ = tiny_study
    out = tmp_path / "export"
    out.mkdir()
    (out / "pareto.json").write_text('{"old": true}\n')
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "pareto.csv":
            raise OSError(28, "No space left on device", str(src), None, str(dst))
        real_replace(src, dst)

    monkeypatch.setattr("motune.export.os.replace", replace)
    with pytest.raises(ExportError, match=r"cannot write the export to .*No space left on device .*pareto\.csv"):
        export_pareto(study, out, store, _knee(study))
    assert (out / "pareto.json").read_text() == '{"old": true}\n'
    assert not (out / "pareto.csv").exists()
    assert not [p for p in _tree(out) if ".motune-export-" in p]
