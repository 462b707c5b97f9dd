"""Your own network and data through the CLI: the wine example of studies/, bad import paths, the worker's trust rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

import motune
from motune.config import StudyConfig
from motune.study import create_or_load_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"

BADNETS = '''
import torch

def returns_int(batch_size=16):
    return 3

def junk(batch_size=16):
    return {"train": [1, 2], "val": ["junk"]}

def raises(batch_size=16):
    raise RuntimeError("no wine today")

def not_a_module(input_shape, num_classes, hidden=24):
    return "a string"
'''


@pytest.fixture
def wine_dir(tmp_path: Path) -> Path:
    """studies/wine.toml and winenets.py copied into a fresh folder (the config's folder is what makes it importable)."""
    for name in ("wine.toml", "winenets.py"):
        shutil.copy(STUDIES / name, tmp_path / name)
    (tmp_path / "badnets.py").write_text(BADNETS, encoding="utf-8")
    return tmp_path


def test_wine_example_end_to_end(wine_dir: Path, run_motune) -> None:
    code, _, err = run_motune(wine_dir, "run", "wine.toml", "--n-trials", "5", "--quiet")
    assert code == 0, err
    storage = f"sqlite:///{wine_dir / 'wine.db'}"
    code, out, err = run_motune(wine_dir, "status", "--storage", storage)
    assert code == 0, err
    assert "study 'wine': 5 complete" in out and "knee: trial" in out
    code, _, err = run_motune(wine_dir, "export", "--storage", storage, "--out", "pareto")
    assert code == 0, err

    import winenets  # importable now: the config's folder was put on sys.path by `motune run wine.toml`

    val = winenets.wine()["val"]
    rows = [r for r in json.loads((wine_dir / "pareto" / "pareto.json").read_text())["rows"] if r["checkpoint"]]
    assert rows
    for row in rows:
        path = wine_dir / "pareto" / row["checkpoint"]
        with pytest.raises(motune.CheckpointError, match=r"user code \('winenets:make'\).*trust=True"):
            motune.load_model(path)
        model = motune.load_model(path, trust=True)
        assert type(model).__name__ == "WineNet" and type(model).__module__ == "winenets"
        assert model.body[0].out_features == 24  # [train.model_args] hidden = 24 was recorded and used
        again = motune.load_model(path, model=winenets.make)
        x, y = next(iter(val))
        with torch.no_grad():
            logits = model(x)
            assert torch.equal(logits, again(x))
        assert int((logits.argmax(1) == y).sum()) / len(y) == pytest.approx(row["val_accuracy"], abs=1e-12)
        penalised = [model.body[0].weight, model.body[2].weight, model.head.weight]
        assert sum(int(w.count_nonzero()) for w in penalised) == row["nonzeros"]


def test_local_workers_get_the_config_file(wine_dir: Path, run_motune) -> None:
    """`run --workers 2` starts `motune worker` processes: they are given the config file, so they may run its code."""
    code, out, err = run_motune(wine_dir, "run", "wine.toml", "--workers", "2", "--n-trials", "3", "--quiet")
    assert code == 0, err + out
    study = optuna.load_study(study_name="wine", storage=motune.open_storage(f"journal:{wine_dir / 'wine.journal'}"))
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ('"winenets:wine"', '"nosuchmodule:wine"', "data.dataset: 'nosuchmodule:wine': module 'nosuchmodule' is not importable"),
        ('"winenets:make"', '"winenets:nope"', "train.model: 'winenets:nope': module 'winenets' has no attribute 'nope'"),
        ('"winenets:wine"', '"badnets:raises"', "data.dataset: badnets:raises raised RuntimeError: no wine today"),
        ('"winenets:wine"', '"badnets:returns_int"', "data.dataset: badnets:returns_int returned a int"),
        ('"winenets:make"', '"badnets:not_a_module"', "train.model: badnets:not_a_module returned a str, not a torch.nn.Module"),
        ('"winenets:wine"', '"badnets:junk"', "data.dataset: the val loader yields str batches"),
        ('["body.*.weight", "head.weight"]', '["body.*.weight", "tail.*"]',
         "train.penalise: pattern 'tail.*' matches no parameter"),
        ('["body.*.weight", "head.weight"]', '["*.bias"]', "train.penalise: pattern '*.bias' matches only biases"),
        ("hidden = 24", "widht = 24", "train.model_args: 'widht' is not an argument of winenets:make (it takes: hidden)"),
        ("batch_size = 16", "bsize = 16", "data.args: 'bsize' is not an argument of winenets:wine"),
        ("batch_size = 16", "batch_size = 0", "data.dataset: winenets:wine raised ValueError"),
        ('"winenets:make"', '"winenets make"', "train.model: unknown value 'winenets make'"),
    ],
    ids=["no-module", "no-attribute", "raises", "wrong-type", "not-a-module", "junk-batches", "pattern-no-match",
         "pattern-only-biases", "model-args-key", "data-args-key", "bad-args-value", "malformed-path"],
)
def test_bad_user_code_exits_2_naming_the_key_before_any_storage(wine_dir: Path, run_motune, old: str, new: str,
                                                                 expected: str) -> None:
    text = (wine_dir / "wine.toml").read_text(encoding="utf-8")
    assert old in text
    (wine_dir / "bad.toml").write_text(text.replace(old, new), encoding="utf-8")
    code, out, err = run_motune(wine_dir, "run", "bad.toml", "--quiet")
    assert code == 2
    assert out == "" and err.count("\n") == 1 and err.startswith("motune: error: ")
    assert expected in err
    assert not (wine_dir / "wine.db").exists() and not (wine_dir / "wine-artifacts").exists()


def test_create_checks_the_users_code_before_the_study_exists(wine_dir: Path, run_motune) -> None:
    text = (wine_dir / "wine.toml").read_text(encoding="utf-8")
    (wine_dir / "bad.toml").write_text(text.replace('"winenets:make"', '"winenets:nope"'), encoding="utf-8")
    code, _, err = run_motune(wine_dir, "create", "bad.toml")
    assert code == 2 and err.count("\n") == 1 and "train.model: 'winenets:nope'" in err, err
    assert not list(wine_dir.glob("*.db"))


# ----------------------------------------------------------------------------- the worker's trust rule


def test_worker_never_calls_an_import_path_from_the_storage_without_trust(tmp_path: Path, run_motune, monkeypatch) -> None:
    """A shared database is data: a config written there must not make a joining worker run code."""
    called: list[object] = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: called.append((a, k)))
    evil = StudyConfig.from_dict({
        "study": {"name": "evil"},
        "data": {"dataset": "subprocess:run", "args": {"args": f"touch {tmp_path / 'pwned'}", "shell": True}},
    })
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    trials_before = len(create_or_load_study(evil, storage).get_trials())
    code, out, err = run_motune(tmp_path, "worker", "--storage", storage, "--study", "evil", "--n-trials", "2")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "data.dataset = 'subprocess:run'" in err and "--config FILE.toml" in err and "--trust-study-config" in err
    assert not called and not (tmp_path / "pwned").exists()
    assert len(optuna.load_study(study_name="evil", storage=storage).get_trials()) == trials_before


def test_worker_with_the_config_file_or_the_trust_flag_runs(wine_dir: Path, run_motune) -> None:
    storage = f"sqlite:///{wine_dir / 'wine.db'}"
    code, _, err = run_motune(wine_dir, "create", "wine.toml", "--storage", storage)
    assert code == 0, err
    code, _, err = run_motune(wine_dir, "worker", "--storage", storage, "--study", "wine", "--n-trials", "1", "--quiet")
    assert code == 2 and "--trust-study-config" in err
    code, _, err = run_motune(wine_dir, "worker", "--storage", storage, "--study", "wine", "--config", "wine.toml",
                              "--n-trials", "1", "--quiet")
    assert code == 0, err
    code, _, err = run_motune(wine_dir, "worker", "--storage", storage, "--study", "wine", "--trust-study-config",
                              "--n-trials", "2", "--quiet")
    assert code == 0, err
    assert len(optuna.load_study(study_name="wine", storage=storage).get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    # a different file is not the study's config
    (wine_dir / "other.toml").write_text((wine_dir / "wine.toml").read_text().replace("hidden = 24", "hidden = 8"))
    code, _, err = run_motune(wine_dir, "worker", "--storage", storage, "--study", "wine", "--config", "other.toml",
                              "--n-trials", "3", "--quiet")
    assert code == 2 and "other.toml differs from the config stored in study 'wine'" in err


def test_module_not_importable_names_it(tmp_path: Path) -> None:
    assert sys.modules.get("nosuchmodule") is None
    with pytest.raises(ValueError, match="model: 'nosuchmodule:make': module 'nosuchmodule' is not importable"):
        motune.build_model("nosuchmodule:make", (13,), 3)
