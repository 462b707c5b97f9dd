"""Shared fixtures: a tiny but real motune study, built by hand once per test session.

``tiny_study`` follows the study schema that ``motune.study`` writes (two minimised
objectives ``[val cross-entropy, l1]``, the per-trial user attributes, one pruned
checkpoint per trial uploaded as an Optuna artifact), so tests of anything that
*reads* studies (export, plots, the CLI) can use it without running the sampler.

Contents (digits, ``limit=TINY_LIMIT`` samples per split, ``TINY_EPOCHS`` epochs of Adam per front trial):

* weighted-sum trials, ``kind="weighted_sum"``, ``fidelity="front"``, λ in
  ``TINY_LAMBDAS`` (param ``l1_weight``);
* one deliberately dominated trial (λ = 0, learning rate so small that the weights
  hardly move: high cross-entropy *and* a large l1 norm);
* one SMGD trial (``method="multi_gradient"``, SGD), ``kind="smgd"``, no ``l1_weight``;
* the knee of the front trials (``motune.pareto.knee_index``) retrained with
  ``TINY_FULL_EPOCHS`` epochs, ``fidelity="full"``; its number is in the study user
  attribute ``tiny_study["knee_trial"]``;
* one FAIL trial with ``fail_reason``.

The study user attribute ``tiny_study`` records how the data were loaded
(``dataset``, ``limit``) so a test can rebuild the exact validation split, plus the
storage URL (a SQLite file) so CLI tests can open the same study.
"""

from __future__ import annotations

import os

# One intra-op thread for the tests and every subprocess they start: the networks are
# tiny, and several worker processes with two OpenMP threads each on a 2-core machine
# run 5-30x slower than with one (measured; see bench/throughput.py for real speed).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from motune import TrainConfig, load_dataset, save_checkpoint, train
from motune.cli import main as motune_main
from motune.pareto import knee_index
from motune.storage import local_lock_dir
from motune.study import history_records, result_attrs
from motune.trials import HISTORY

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TINY_LIMIT = 400
TINY_EPOCHS = 3
TINY_FULL_EPOCHS = 6
TINY_LR = 0.01
TINY_LAMBDAS = (0.0, 1e-4, 1e-3, 1e-2)
TINY_STUDY_NAME = "tiny"


class TinyStudy(NamedTuple):
    """What the ``tiny_study`` fixture returns (unpacks as a 3-tuple)."""

    study: optuna.Study
    artifact_store: FileSystemArtifactStore
    artifact_dir: Path


def _record(
    study: optuna.Study,
    store: FileSystemArtifactStore,
    scratch: Path,
    config: TrainConfig,
    *,
    kind: str,
    fidelity: str,
    data: Any,
) -> optuna.trial.FrozenTrial:
    """Run one training as one trial and store it the way ``motune.study`` does."""
    if config.method == "weighted_sum":
        # Enqueueing fixes the sampled value: the stored param is exactly config.l1_weight.
        study.enqueue_trial({"l1_weight": config.l1_weight})
    trial = study.ask()
    if config.method == "weighted_sum":
        trial.suggest_float("l1_weight", 0.0, 1.0)
    result = train(config, data=data)
    path = scratch / f"trial-{trial.number}.pt"
    save_checkpoint(
        path,
        model=config.model,
        input_shape=result.input_shape,
        num_classes=result.num_classes,
        state_dict=result.state_dict,
        metadata={"trial": trial.number, "kind": kind, "l1_weight": config.l1_weight},
    )
    artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    attrs = {**result_attrs(result, kind, fidelity), "checkpoint": artifact_id}
    history = scratch / f"history-{trial.number}.json"
    history.write_text(json.dumps(history_records(result)))
    attrs[HISTORY] = upload_artifact(artifact_store=store, file_path=str(history), study_or_trial=trial)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return study.tell(trial, [result.cross_entropy, result.l1])


def build_tiny_study(directory: Path) -> TinyStudy:
    """Build the tiny study described in the module docstring under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    artifact_dir = directory / "artifacts"
    artifact_dir.mkdir(exist_ok=True)
    scratch = directory / "scratch"
    scratch.mkdir(exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    storage = f"sqlite:///{directory / 'study.db'}"
    study = optuna.create_study(
        study_name=TINY_STUDY_NAME,
        storage=storage,
        directions=["minimize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["cross_entropy", "l1"])
    data = load_dataset("digits", limit=TINY_LIMIT)
    base = TrainConfig(dataset="digits", limit=TINY_LIMIT, model="digits_cnn", epochs=TINY_EPOCHS, lr=TINY_LR, seed=0)

    front = [
        _record(study, store, scratch, base.replace(l1_weight=lam), kind="weighted_sum", fidelity="front", data=data)
        for lam in TINY_LAMBDAS
    ]
    # Barely trained: dominated by the trained λ = 0 trial (higher f1) and by any λ > 0.
    barely = base.replace(l1_weight=0.0, lr=1e-6, epochs=1)
    _record(study, store, scratch, barely, kind="weighted_sum", fidelity="front", data=data)
    smgd = base.replace(method="multi_gradient", optimizer="sgd", lr=0.1)
    front.append(_record(study, store, scratch, smgd, kind="smgd", fidelity="front", data=data))

    points = np.array([t.values for t in front if t.params.get("l1_weight") is not None])
    ws = [t for t in front if t.params.get("l1_weight") is not None]
    knee_front = ws[knee_index(points)]
    knee_cfg = base.replace(l1_weight=knee_front.params["l1_weight"], epochs=TINY_FULL_EPOCHS)
    knee = _record(study, store, scratch, knee_cfg, kind="weighted_sum", fidelity="full", data=data)

    failed = study.ask()
    failed.set_user_attr("kind", "weighted_sum")
    failed.set_user_attr("fidelity", "front")
    failed.set_user_attr("fail_reason", "DivergenceError: training diverged (made up for the tests)")
    study.tell(failed, state=TrialState.FAIL)

    study.set_user_attr(
        "tiny_study",
        {"dataset": "digits", "limit": TINY_LIMIT, "storage": storage, "knee_trial": knee.number},
    )
    assert all(math.isfinite(v) for t in study.get_trials(states=(TrialState.COMPLETE,)) for v in t.values)
    return TinyStudy(study, store, artifact_dir)


@pytest.fixture(scope="session", autouse=True)
def _no_lock_files_left() -> Any:
    """Remove the planning-lock files of this session's SQLite databases (motune.storage.local_lock_dir).

    Each database a test makes is new, so its lock file would stay behind in the user's
    lock directory; none is held once the session's processes are gone.
    """
    directory = local_lock_dir()
    before = set(directory.iterdir()) if directory else set()
    yield
    for path in set(directory.iterdir()) - before if directory else ():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """A small finished motune study on digits (see the module docstring); build once, read only."""
    # One intra-op thread: these nets are tiny, and on a busy machine torch's thread pool
    # makes them ~30x slower. The setting is restored so other tests see the default.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_study(tmp_path_factory.mktemp("tiny_study"))
    finally:
        torch.set_num_threads(threads)


class CliRun(NamedTuple):
    """What one in-process ``motune`` command gave: exit code and captured output."""

    code: int
    out: str
    err: str


@pytest.fixture
def run_motune(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliRun]:
    """Run the ``motune`` command in-process from a directory: ``run_motune(cwd, "status", ...)``.

    Returns a :class:`CliRun` (unpacks as ``code, out, err``) with what the command
    printed since the last capture; the working directory is restored afterwards.
    """

    def run(cwd: Path, *argv: str) -> CliRun:
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            code = motune_main(list(argv))
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    return run
