"""Export a study's Pareto set: a CSV table, a JSON file and the pruned checkpoints.

The *Pareto set* is every COMPLETE trial whose objective vector ``(val cross-entropy,
l1)`` is nondominated among all COMPLETE trials (all kinds, both fidelities), plus the
knee trial when one is given, **always**, even if a front trial happens to dominate it:
the knee is the study's answer (retrained at full fidelity), so an export without it
would be missing the one network most users want. Trials with non-finite values are
never on the front. Identical objective vectors keep the lowest trial number only.

Layout of ``out_dir`` after :func:`export_pareto`::

    pareto.csv                  one row per Pareto-set trial, sorted by cross-entropy
    pareto.json                 {"study": name, "knee_trial": n | null, "rows": [...]}
    checkpoints/trial-NNNN.pt   the pruned network of trial NNNN (motune checkpoint)

With ``selected=trial`` (``motune export --select``, the network a
:func:`motune.select` rule picked) the table and JSON are the same (plus that trial's
row if it is not in the Pareto set, and ``"selected_trial": n`` in the JSON), but only
the selected network's checkpoint is written; the other rows' ``checkpoint`` is empty.

Safety and atomicity: file names are built from trial numbers only, never from strings
stored in the study; every target is resolved and must lie inside ``out_dir``. All
checkpoints are first downloaded into a private staging directory inside ``out_dir``
and verified (each must load as a motune checkpoint). Only when every one succeeded
are the files moved into place with ``os.replace`` (checkpoints first, the CSV and
JSON index last), so a failure (missing artifact, corrupt file) raises
:class:`ExportError` naming the trial and leaves ``out_dir`` as it was, apart from
creating it. Files of an earlier export that are not part of this one are left alone.
An output directory that cannot be created or written (a path under a regular file,
no permission, a full disk) and a directory where an output file goes are
:class:`ExportError` too, one line naming the path: nothing outside ``out_dir`` is
written, and the index files of an earlier export are only replaced last.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import download_artifact
from optuna.trial import FrozenTrial, TrialState

from motune.checkpoint import CheckpointError, load_checkpoint
from motune.trials import (
    CHECKPOINT,
    CHECKPOINT_BYTES,
    FIDELITY,
    KIND,
    finite_complete,
    has_finite_values,
    number_or_none,
    pareto_set,
    trial_lambda,
)

__all__ = [
    "COLUMNS",
    "ExportError",
    "ExportSummary",
    "checkpoint_name",
    "export_pareto",
    "pareto_rows",
    "pareto_trials",
]

COLUMNS: tuple[str, ...] = (
    "trial",
    "kind",
    "fidelity",
    "l1_weight",
    "cross_entropy",
    "l1",
    "val_accuracy",
    "test_accuracy",
    "nonzeros",
    "fraction_kept",
    "is_knee",
    "checkpoint",
    "checkpoint_bytes",
)

CSV_NAME = "pareto.csv"
JSON_NAME = "pareto.json"
CHECKPOINT_DIR = "checkpoints"


class ExportError(ValueError):
    """The Pareto set cannot be exported (missing artifact, bad checkpoint, unsafe target)."""


@dataclass
class ExportSummary:
    """What :func:`export_pareto` wrote (absolute paths)."""

    out_dir: Path
    csv_path: Path
    json_path: Path
    checkpoints: list[Path] = field(default_factory=list)
    rows: int = 0
    knee_trial: int | None = None


def checkpoint_name(number: int) -> str:
    """Relative path of trial ``number``'s checkpoint inside an export directory."""
    if not isinstance(number, (int, np.integer)) or isinstance(number, bool) or number < 0:
        raise ExportError(f"trial number must be a non-negative integer, got {number!r}")
    return f"{CHECKPOINT_DIR}/trial-{int(number):04d}.pt"


def _resolve_knee(complete: Sequence[FrozenTrial], knee: FrozenTrial | None) -> FrozenTrial | None:
    """The study's own copy of the knee trial; reject a knee that is not a COMPLETE trial here."""
    if knee is None:
        return None
    for trial in complete:
        if trial.number == knee.number:
            if not has_finite_values(trial):
                raise ExportError(f"knee trial {knee.number} has no finite objective values")
            return trial
    raise ExportError(f"knee trial {knee.number} is not a COMPLETE trial of this study")


def pareto_trials(
    study: optuna.Study, knee: FrozenTrial | None = None, selected: FrozenTrial | None = None
) -> list[FrozenTrial]:
    """The Pareto set (see the module docstring), sorted by cross-entropy, then trial number."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    chosen = pareto_set(finite_complete(complete))
    for extra in (knee, selected):
        resolved = _resolve_knee(complete, extra)
        if resolved is not None and all(t.number != resolved.number for t in chosen):
            chosen.append(resolved)
    return sorted(chosen, key=lambda t: (t.values[0], t.number))


def _int_or_none(value: Any) -> int | None:
    number = number_or_none(value)
    return None if number is None else int(number)


def _has_checkpoint(trial: FrozenTrial) -> bool:
    artifact_id = trial.user_attrs.get(CHECKPOINT)
    return isinstance(artifact_id, str) and bool(artifact_id)


def _row(trial: FrozenTrial, knee_number: int | None) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "kind": attrs.get(KIND) if isinstance(attrs.get(KIND), str) else None,
        "fidelity": attrs.get(FIDELITY) if isinstance(attrs.get(FIDELITY), str) else None,
        "l1_weight": trial_lambda(trial),
        "cross_entropy": float(trial.values[0]),
        "l1": float(trial.values[1]),
        "val_accuracy": number_or_none(attrs.get("val_accuracy")),
        "test_accuracy": number_or_none(attrs.get("test_accuracy")),
        "nonzeros": _int_or_none(attrs.get("nonzeros")),
        "fraction_kept": number_or_none(attrs.get("fraction_kept")),
        "is_knee": trial.number == knee_number,
        "checkpoint": checkpoint_name(trial.number) if _has_checkpoint(trial) else None,
        "checkpoint_bytes": _int_or_none(attrs.get(CHECKPOINT_BYTES)) if _has_checkpoint(trial) else None,
    }


def pareto_rows(study: optuna.Study, knee: FrozenTrial | None = None) -> list[dict[str, Any]]:
    """One row (keys :data:`COLUMNS`, in that order) per Pareto-set trial, sorted by cross-entropy.

    ``checkpoint`` is the file's path relative to the export directory
    (``checkpoints/trial-0007.pt``), or None when the trial stored no checkpoint.
    Missing or malformed user attributes become None rather than errors, so rows
    can be built for any study with the two motune objectives.
    """
    return _rows(pareto_trials(study, knee), knee)


def _rows(trials: Sequence[FrozenTrial], knee: FrozenTrial | None) -> list[dict[str, Any]]:
    knee_number = knee.number if knee is not None else None
    return [_row(trial, knee_number) for trial in trials]


def _inside(root: Path, target: Path) -> Path:
    """``target`` resolved; raise :class:`ExportError` unless it lies inside ``root``."""
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise ExportError(f"refusing to write {target}: it resolves to {resolved}, outside {root}")
    return resolved


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # None -> empty cell; floats keep full precision (repr).
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def export_pareto(
    study: optuna.Study,
    out_dir: str | os.PathLike[str],
    artifact_store: Any,
    knee: FrozenTrial | None = None,
    selected: FrozenTrial | None = None,
) -> ExportSummary:
    """Write ``pareto.csv``, ``pareto.json`` and the Pareto set's checkpoints into ``out_dir``.

    ``artifact_store`` is the Optuna artifact store the study's checkpoints were uploaded
    to (e.g. ``FileSystemArtifactStore(dir)``). Existing files of the same names are
    replaced. Fails as a whole (see the module docstring): raises :class:`ExportError`
    naming the trial when a checkpoint artifact is missing or not a motune checkpoint,
    before anything in ``out_dir`` is replaced, and naming the path when ``out_dir``
    cannot be created or written (the CLI turns it into exit code 2 and one line).
    ``selected``: write only this trial's checkpoint (see the module docstring).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out, exc) from None
    root = out.resolve()
    # One snapshot of the study: other workers may be adding trials while we export.
    chosen = pareto_trials(study, knee, selected)
    trials = {t.number: t for t in chosen}
    rows = _rows(chosen, knee)
    if selected is not None:
        for row in rows:
            if row["trial"] != selected.number:
                row["checkpoint"] = row["checkpoint_bytes"] = None

    # Targets, checked before anything is written: names come from trial numbers only.
    ckpt_dir = _inside(root, root / CHECKPOINT_DIR)
    targets = {
        CSV_NAME: _inside(root, root / CSV_NAME),
        JSON_NAME: _inside(root, root / JSON_NAME),
    }
    for row in rows:
        if row["checkpoint"] is not None:
            targets[row["checkpoint"]] = _inside(root, root / row["checkpoint"])
    # A directory where a file goes would fail its rename half-way through publishing.
    for target in targets.values():
        if target.is_dir():
            raise ExportError(
                f"cannot write the export to {out}: {target} is a directory; move it away or choose another output directory"
            )

    try:
        staging = Path(tempfile.mkdtemp(prefix=".motune-export-", dir=root))
    except OSError as exc:
        raise _unwritable(out, exc) from None
    try:
        (staging / CHECKPOINT_DIR).mkdir()
        for row in rows:
            if row["checkpoint"] is None:
                continue
            trial = trials[row["trial"]]
            _download_checkpoint(artifact_store, trial, staging / row["checkpoint"])

        knee_number = knee.number if knee is not None else None
        document: dict[str, Any] = {"study": study.study_name, "knee_trial": knee_number, "rows": rows}
        if selected is not None:
            document["selected_trial"] = selected.number
        (staging / CSV_NAME).write_text(_csv_text(rows), encoding="utf-8")
        (staging / JSON_NAME).write_text(
            json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )

        # Publish: checkpoints first, the index files last, each with an atomic rename.
        if any(row["checkpoint"] is not None for row in rows):
            ckpt_dir.mkdir(exist_ok=True)
            _inside(root, ckpt_dir)  # re-check: it may have been replaced by a link meanwhile
        ordered = [name for name in targets if name not in (CSV_NAME, JSON_NAME)] + [CSV_NAME, JSON_NAME]
        for name in ordered:
            os.replace(staging / name, targets[name])
    except OSError as exc:  # disk full, a target that cannot be replaced, ...
        raise _unwritable(out, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return ExportSummary(
        out_dir=root,
        csv_path=targets[CSV_NAME],
        json_path=targets[JSON_NAME],
        checkpoints=[targets[row["checkpoint"]] for row in rows if row["checkpoint"] is not None],
        rows=len(rows),
        knee_trial=knee.number if knee is not None else None,
    )


def _unwritable(out: Path, exc: OSError) -> ExportError:
    """One line for an output directory that cannot be created or written: the path, why, what to do.

    A path under a regular file gives "Not a directory" from the OS; naming the file that
    is in the way says more than the errno.
    """
    reason = exc.strerror or type(exc).__name__
    failed = exc.filename2 or exc.filename  # os.replace: the target, not the staged file
    if failed and Path(failed) != out:
        reason += f" ({failed})"
    for ancestor in (out, *out.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                reason = f"{ancestor} is a file, not a directory"
            break
    return ExportError(
        f"cannot write the export to {out}: {reason}; choose an output directory that can be created and written"
    )


def _download_checkpoint(artifact_store: Any, trial: FrozenTrial, path: Path) -> None:
    """Download trial ``trial``'s checkpoint artifact to ``path`` and check it is a motune checkpoint."""
    artifact_id = trial.user_attrs[CHECKPOINT]
    try:
        download_artifact(artifact_store=artifact_store, file_path=str(path), artifact_id=artifact_id)
    except Exception as exc:  # stores raise ArtifactNotFound, OSError, ValueError, botocore errors...
        raise ExportError(
            f"trial {trial.number}: cannot download its checkpoint (artifact {artifact_id!r}): "
            f"{type(exc).__name__}: {exc}; is the artifact store the one the study was run with?"
        ) from exc
    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        raise ExportError(f"trial {trial.number}: artifact {artifact_id!r} is not a usable checkpoint: {exc}") from exc
