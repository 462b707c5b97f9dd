"""optuna-dashboard as the place to inspect a motune study: a note on every trial, motune's figures on the study.

When `optuna-dashboard <https://github.com/optuna/optuna-dashboard>`_ is importable (the
``motune[dashboard]`` extra), :class:`DashboardCallback`, run after each recorded trial
(``motune run`` and ``motune worker`` add it; pass it in ``run_study(callbacks=...)``
from Python), writes:

* a markdown **note** on every COMPLETE or PRUNED trial (``optuna_dashboard.save_note``):
  kind, λ, fidelity, both objectives, validation and test accuracy, nonzeros and the
  fraction kept, nonzeros per layer as a table, the checkpoint (artifact id, bytes, how
  to download and load it) and, for a pruned trial, why it was stopped and its
  per-epoch intermediates;
* motune's **figures** on the study (``optuna_dashboard.save_plotly_graph_object``): the
  front with the knee (:func:`motune.plots.front_figure`) and accuracy against nonzeros
  (:func:`motune.plots.accuracy_sparsity_figure`), under the fixed ids in
  :data:`FIGURES`, so each COMPLETE trial replaces them with the current ones.

Both live in the study's system attributes, through whatever storage the study uses
(motune's :class:`~motune.patience.PatientStorage` included), so every worker and the
dashboard see them. Writing them never fails a trial: an error is logged and the study
goes on. Two workers refreshing the figures at the same instant may leave a figure
mixed from both until the next refresh; ``motune dashboard`` refreshes them before it
starts the server. Each refresh writes a few kB per trial of the study (the journal
storage keeps every write: a 100-trial study adds some MB to its log).

Example (the note of a trial, as the dashboard shows it)::

    import optuna
    from optuna.trial import create_trial
    from motune.dashboard import trial_note

    trial = create_trial(values=[0.2, 31.0], user_attrs={"kind": "smgd", "fidelity": "full",
                         "val_accuracy": 0.95, "nonzeros": 120, "penalised_size": 400,
                         "fraction_kept": 0.3, "nonzeros_per_layer": {"fc.weight": 120}})
    print(trial_note(trial))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from motune.config import StudyConfig
from motune.plots import accuracy_sparsity_figure, front_figure
from motune.storage import StudyError
from motune.study import knee_trial, load_study_config
from motune.trials import (
    CHECKPOINT,
    CHECKPOINT_BYTES,
    FIDELITY,
    HISTORY,
    INTERMEDIATES,
    PRUNE_REASON,
    number_or_none,
    trial_kind,
    trial_lambda,
)

__all__ = ["FIGURES", "DashboardCallback", "dashboard_available", "dashboard_callbacks", "save_figures", "save_trial_note",
           "trial_note"]

_log = logging.getLogger(__name__)

# Graph-object ids on the study (stable: a refresh overwrites the figure with the same id).
FIGURES: dict[str, Callable[[optuna.Study, FrozenTrial | None], go.Figure]] = {
    "motune-front": front_figure,
    "motune-accuracy-vs-nonzeros": accuracy_sparsity_figure,
}


def _dashboard() -> Any:
    """The ``optuna_dashboard`` module, or None when it is not importable."""
    try:
        import optuna_dashboard
    except ImportError:
        return None
    return optuna_dashboard


def dashboard_available() -> bool:
    """Whether optuna-dashboard is importable here (``pip install 'motune[dashboard]'``)."""
    return _dashboard() is not None


# ----------------------------------------------------------------------------- the note


def _num(value: Any, spec: str, default: str = "n/a") -> str:
    number = number_or_none(value)
    return default if number is None else format(number, spec)


def _cell(value: Any) -> str:
    """A value as a markdown table cell (no pipes, no line breaks)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(head: tuple[str, ...], rows: list[tuple[Any, ...]], align: str = "---:") -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "|".join([align] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def trial_note(trial: FrozenTrial, artifact_dir: str | None = None) -> str:
    """The markdown note of a COMPLETE or PRUNED motune trial (what :func:`save_trial_note` writes).

    Reads the user attributes the study runner records (:mod:`motune.trials`); a missing
    attribute shows as ``n/a``, so the note of a trial from an older motune still renders.
    ``artifact_dir``: the checkpoint directory named in the download example.
    """
    a = trial.user_attrs
    kind = trial_kind(trial)
    lam = trial_lambda(trial)
    pruned = trial.state == TrialState.PRUNED
    lines = [f"## Trial {trial.number}: {kind}, {a.get(FIDELITY, 'n/a')} fidelity" + (" (pruned)" if pruned else "")]
    rows: list[tuple[Any, ...]] = [
        ("kind", kind),
        ("λ (l1_weight)", "- (multi-gradient: no λ)" if lam is None else f"{lam:.3e}"),
        ("fidelity", a.get(FIDELITY, "n/a")),
        ("epochs", a.get("epochs", "n/a")),
    ]
    if trial.values is not None and len(trial.values) == 2:
        rows += [("cross-entropy (val)", _num(trial.values[0], ".4f")), ("l1 norm", _num(trial.values[1], ".4g"))]
    if not pruned:
        size = number_or_none(a.get("penalised_size"))
        nonzeros = _num(a.get("nonzeros"), ",.0f") + ("" if size is None else f" of {size:,.0f}")
        rows += [
            ("val accuracy", _num(a.get("val_accuracy"), ".2%")),
            ("test accuracy", _num(a.get("test_accuracy"), ".2%")),
            ("nonzeros", nonzeros),
            ("fraction kept", _num(a.get("fraction_kept"), ".2%")),
            ("seconds", _num(a.get("seconds"), ".1f")),
        ]
        if number_or_none(a.get("alpha_mean")) is not None:
            rows.append(("mean α (multi-gradient)", _num(a.get("alpha_mean"), ".3f")))
    lines += ["", *_table(("", "value"), rows, align="---")]
    if pruned:
        lines += ["", f"**Pruned:** {a.get(PRUNE_REASON, 'no reason recorded')}"]
        inter = [r for r in a.get(INTERMEDIATES) or [] if isinstance(r, list) and len(r) == 4]
        if inter:
            lines += ["", "### Intermediate values (validation, each epoch)", ""]
            lines += _table(("epoch", "cross-entropy", "l1", "accuracy"),
                            [(r[0], _num(r[1], ".4f"), _num(r[2], ".4g"), _num(r[3], ".2%")) for r in inter])
    per_layer = a.get("nonzeros_per_layer")
    if isinstance(per_layer, Mapping) and per_layer:
        lines += ["", "### Nonzeros per layer", ""]
        lines += _table(("layer", "nonzeros"), [(f"`{name}`", _num(n, ",.0f")) for name, n in per_layer.items()])
    artifact = a.get(CHECKPOINT)
    if artifact is not None:
        number = f"{trial.number:04d}"
        lines += [
            "",
            "### Checkpoint",
            "",
            f"Artifact `{artifact}` ({_num(a.get(CHECKPOINT_BYTES), ',.0f')} bytes; the pruned network, stored sparsely): "
            "download it from this page's Artifacts, or in Python",
            "",
            "```python",
            "from optuna.artifacts import FileSystemArtifactStore, download_artifact",
            "import motune",
            "",
            f'download_artifact(artifact_store=FileSystemArtifactStore({str(artifact_dir or "ARTIFACT_DIR")!r}),',
            f'                  artifact_id="{artifact}",',
            f'                  file_path="trial-{number}.pt")',
            f'model = motune.load_model("trial-{number}.pt")  # the dense nn.Module, pruned weights zero',
            "```",
            "",
            "`motune export` writes every Pareto trial's checkpoint with `pareto.csv`.",
        ]
    if a.get(HISTORY) is not None:
        lines += ["", f"Per-epoch history: artifact `{a[HISTORY]}` (JSON; `motune plot` draws the knee's)."]
    return "\n".join(lines) + "\n"


@dataclass
class _TrialRef:
    """What ``optuna_dashboard.save_note`` reads of a trial (storage, study, id), for a trial already finished."""

    storage: optuna.storages.BaseStorage
    study: optuna.Study
    _trial_id: int


def save_trial_note(study: optuna.Study, trial: FrozenTrial, artifact_dir: str | None = None) -> None:
    """Write :func:`trial_note` as ``trial``'s optuna-dashboard note (through the study's storage)."""
    dashboard = _dashboard()
    if dashboard is None:
        raise ImportError("optuna-dashboard is not installed: pip install 'motune[dashboard]'")
    dashboard.save_note(_TrialRef(study._storage, study, trial._trial_id), trial_note(trial, artifact_dir))


# ----------------------------------------------------------------------------- the figures


def _compact(fig: go.Figure) -> go.Figure:
    """``fig`` without plotly's 7 kB template (it would be stored again at every refresh), looking alike."""
    grid = {"gridcolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "linecolor": "#ebf0f8"}
    fig.update_layout(template=None, plot_bgcolor="white", paper_bgcolor="white", xaxis=grid, yaxis=grid)
    return fig


def save_figures(study: optuna.Study, knee: FrozenTrial | None = None) -> list[str]:
    """Store (or replace) motune's figures of ``study`` for optuna-dashboard; return their ids (:data:`FIGURES`)."""
    dashboard = _dashboard()
    if dashboard is None:
        raise ImportError("optuna-dashboard is not installed: pip install 'motune[dashboard]'")
    for graph_id, make in FIGURES.items():
        dashboard.save_plotly_graph_object(study, _compact(make(study, knee)), graph_object_id=graph_id)
    return list(FIGURES)


# ----------------------------------------------------------------------------- the callback


class DashboardCallback:
    """Run after each recorded trial: the trial's note, and the study's figures when a trial completed.

    A callback of :func:`motune.study.run_study` (``callbacks=[DashboardCallback()]``) or
    of ``study.optimize``. ``config`` gives the knee rule (default: the config stored in
    the study; a study without one gets the figures without a knee); ``artifact_dir``, the
    checkpoint directory, is named in the notes (as an absolute path). Never raises: a
    failed dashboard write is logged as a warning and the study goes on.

    >>> import optuna
    >>> study = optuna.create_study(directions=["minimize", "minimize"])
    >>> study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2, callbacks=[DashboardCallback()])
    >>> from optuna_dashboard import get_note
    >>> "## Trial 1" in get_note(optuna.trial.Trial(study, study.trials[1]._trial_id))
    True
    """

    def __init__(self, config: StudyConfig | None = None, artifact_dir: str | os.PathLike[str] | None = None) -> None:
        self.config = config
        self.artifact_dir = None if artifact_dir is None else os.path.abspath(artifact_dir)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return
        try:
            save_trial_note(study, trial, self.artifact_dir)
            if trial.state == TrialState.COMPLETE:
                save_figures(study, self._knee(study))
        except Exception as exc:  # the dashboard is a view: it must never fail a trial or a run
            _log.warning("motune: optuna-dashboard note/figures of trial %d not written: %s: %s",
                         trial.number, type(exc).__name__, exc)

    def refresh_figures(self, study: optuna.Study) -> None:
        """Store the study's figures now (:func:`save_figures` with the knee); a failure is logged, not raised."""
        try:
            save_figures(study, self._knee(study))
        except Exception as exc:
            _log.warning("motune: optuna-dashboard figures not written: %s: %s", type(exc).__name__, exc)

    def _knee(self, study: optuna.Study) -> FrozenTrial | None:
        try:
            config = self.config or load_study_config(study)
        except StudyError:  # not a motune study (no stored config): figures without a knee
            return None
        return knee_trial(study, config)


def dashboard_callbacks(
    config: StudyConfig | None = None, artifact_dir: str | os.PathLike[str] | None = None
) -> list[DashboardCallback]:
    """``[DashboardCallback(...)]`` when optuna-dashboard is importable, else ``[]`` (what the CLI adds)."""
    return [DashboardCallback(config, artifact_dir)] if dashboard_available() else []
