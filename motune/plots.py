"""Plotly figures of a motune study: the front, accuracy against size, progress, pruning.

Every ``*_figure`` function returns a ``plotly.graph_objects.Figure`` and touches no
files; :func:`write_plots` saves them as HTML. The machines motune runs on may have no
network, so the HTML does not load plotly.js from a CDN: ``plotly.min.js`` is written
once beside the HTML files, which reference it by relative path (open the files from
that directory, or copy the directory as a whole).

Marking is the same in the two scatter plots (trace names are stable API: tests and
users select traces by name):

* ``"all trials"``: every COMPLETE trial, grey;
* ``"Pareto front"``: the nondominated COMPLETE trials (by the objective values, all
  kinds and fidelities), joined by a line in objective order;
* ``"SMGD / multi-gradient"``: trials of the multi-gradient kinds (SMGD, multi-Adam,
  multi-RMSprop), diamonds;
* ``"GMP at the knee's sparsity"``: the GMP baseline trial (:mod:`motune.gmp`), a cross;
* ``"full fidelity"``: trials retrained at full length, open squares;
* ``"knee"``: the knee trial, a star.

A marking trace is left out when it would be empty. Hover text shows the trial
number, kind and fidelity, λ (``1.2e-04``; "-" for the multi-gradient kinds), both
objectives, validation accuracy, nonzeros and the fraction of weights kept.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs

from motune.pareto import hypervolume, nondominated_mask, normalise
from motune.trials import (
    FIDELITY,
    GMP,
    HYPERVOLUME_REFERENCE,
    KIND,
    WARM_START_FROM,
    WEIGHTED_SUM,
    finite_complete,
    is_full,
    number_or_none,
    pareto_set,
    trial_history,
    trial_kind,
    trial_lambda,
)

__all__ = [
    "DEFAULT_REFERENCE",
    "accuracy_sparsity_figure",
    "front_figure",
    "hover_text",
    "hypervolume_history",
    "hypervolume_history_figure",
    "pruning_history_figure",
    "write_plots",
]

DEFAULT_REFERENCE = HYPERVOLUME_REFERENCE  # in normalised objectives: see motune.trials

_GREY = "rgba(150, 150, 150, 0.55)"
_FRONT = "#1f77b4"
_SMGD = "#2ca02c"
_GMP = "#ff7f0e"
_FULL = "#9467bd"
_KNEE = "#d62728"


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with two finite objective values, by trial number."""
    return sorted(finite_complete(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), key=lambda t: t.number)


def _is_multi_gradient(trial: FrozenTrial) -> bool:
    return isinstance(trial.user_attrs.get(KIND), str) and trial_kind(trial) not in (WEIGHTED_SUM, GMP)


_number = number_or_none


def _fmt(value: Any, spec: str, default: str = "n/a") -> str:
    number = _number(value)
    return default if number is None else format(number, spec)


def hover_text(trial: FrozenTrial) -> str:
    """The hover label of one trial (HTML line breaks), shared by all scatter plots."""
    attrs = trial.user_attrs
    kind = attrs.get(KIND, "?")
    fidelity = attrs.get(FIDELITY, "?")
    if _is_multi_gradient(trial) or trial_kind(trial) == GMP:
        lam = "-"
        alpha = _number(attrs.get("alpha_mean"))
        if alpha is not None:
            lam += f" (mean α = {alpha:.3f})"
    else:
        lam = _fmt(trial_lambda(trial), ".1e")
    values = trial.values or [float("nan"), float("nan")]
    return "<br>".join(
        [
            f"trial {trial.number} ({kind}, {fidelity})",
            f"λ = {lam}",
            f"cross-entropy = {values[0]:.4g}",
            f"l1 = {values[1]:.4g}",
            f"val accuracy = {_fmt(attrs.get('val_accuracy'), '.2%')}",
            f"nonzeros = {_fmt(attrs.get('nonzeros'), '.0f')}",
            f"kept = {_fmt(attrs.get('fraction_kept'), '.2%')}",
        ]
    )


def _scatter(
    trials: Sequence[FrozenTrial],
    xy: Callable[[FrozenTrial], tuple[float | None, float | None]],
    name: str,
    marker: dict[str, Any],
    mode: str = "markers",
    line: dict[str, Any] | None = None,
) -> go.Scatter:
    points = [(t, *xy(t)) for t in trials]
    points = [(t, x, y) for t, x, y in points if x is not None and y is not None]
    return go.Scatter(
        x=[x for _, x, _ in points],
        y=[y for _, _, y in points],
        mode=mode,
        name=name,
        marker=marker,
        line=line,
        text=[hover_text(t) for t, _, _ in points],
        customdata=[t.number for t, _, _ in points],
        hovertemplate="%{text}<extra></extra>",
    )


def _marked_figure(
    study: optuna.Study,
    knee: FrozenTrial | None,
    xy: Callable[[FrozenTrial], tuple[float | None, float | None]],
    front_key: Callable[[FrozenTrial], float],
) -> go.Figure:
    """The common layering of the two scatter plots (see the module docstring)."""
    trials = _complete(study)
    front = sorted(pareto_set(trials), key=front_key)
    fig = go.Figure()
    if trials:
        fig.add_trace(_scatter(trials, xy, "all trials", {"color": _GREY, "size": 7}))
    if front:
        fig.add_trace(
            _scatter(front, xy, "Pareto front", {"color": _FRONT, "size": 9}, mode="lines+markers", line={"color": _FRONT})
        )
    multi = [t for t in trials if _is_multi_gradient(t)]
    if multi:
        fig.add_trace(
            _scatter(multi, xy, "SMGD / multi-gradient", {"color": _SMGD, "size": 12, "symbol": "diamond", "line": {"width": 1}})
        )
    gmp = [t for t in trials if trial_kind(t) == GMP]
    if gmp:  # gradual magnitude pruning to the knee's sparsity (motune.gmp)
        fig.add_trace(_scatter(gmp, xy, "GMP at the knee's sparsity", {"color": _GMP, "size": 12, "symbol": "x"}))
    full = [t for t in trials if is_full(t)]
    if full:
        fig.add_trace(
            _scatter(full, xy, "full fidelity", {"color": _FULL, "size": 14, "symbol": "square-open", "line": {"width": 2}})
        )
    if knee is not None:
        own = [t for t in trials if t.number == knee.number]
        if own:
            fig.add_trace(
                _scatter(own, xy, "knee", {"color": _KNEE, "size": 20, "symbol": "star", "line": {"color": "black", "width": 1}})
            )
    if not trials:
        fig.add_annotation(text="no completed trials yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(template="plotly_white", hovermode="closest", legend={"itemsizing": "constant"})
    return fig


def front_figure(study: optuna.Study, knee: FrozenTrial | None = None) -> go.Figure:
    """Objective space: validation cross-entropy (x) against l1 norm (y), front and knee marked.

    Trials warm-started along λ (``warm_start_from``, :mod:`motune.continuation`) are
    joined to their parent by a dotted "continuation path" line.
    """
    fig = _marked_figure(study, knee, lambda t: (t.values[0], t.values[1]), front_key=lambda t: t.values[0])
    by_number = {t.number: t for t in _complete(study)}
    xs: list[float | None] = []
    ys: list[float | None] = []
    for child in by_number.values():
        number = child.user_attrs.get(WARM_START_FROM)
        parent = by_number.get(number) if isinstance(number, int) else None
        if parent is not None:
            xs += [parent.values[0], child.values[0], None]
            ys += [parent.values[1], child.values[1], None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="continuation path", hoverinfo="skip",
                                 line={"color": _GREY, "dash": "dot", "width": 1}))
    fig.update_layout(
        title=f"Pareto front of study {study.study_name!r}",
        xaxis_title="cross-entropy (validation)",
        yaxis_title="l1 norm of penalised weights",
    )
    return fig


def accuracy_sparsity_figure(study: optuna.Study, knee: FrozenTrial | None = None, log_x: bool = False) -> go.Figure:
    """Validation accuracy (y) against nonzero penalised weights (x), marked as the front plot.

    The "Pareto front" trace is the objective-space front (cross-entropy vs l1), shown
    in these coordinates and joined in order of nonzeros. Trials without recorded
    accuracy or nonzeros are left out. With ``log_x`` a trial with zero nonzeros cannot
    be drawn (plotly drops it).
    """

    def xy(t: FrozenTrial) -> tuple[float | None, float | None]:
        return _number(t.user_attrs.get("nonzeros")), _number(t.user_attrs.get("val_accuracy"))

    fig = _marked_figure(study, knee, xy, front_key=lambda t: xy(t)[0] if xy(t)[0] is not None else math.inf)
    fig.update_layout(
        title=f"Accuracy against size, study {study.study_name!r}",
        xaxis_title="nonzero penalised weights",
        yaxis_title="accuracy (validation)",
        yaxis_tickformat=".0%",
    )
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def hypervolume_history(
    study: optuna.Study, reference: Sequence[float] | None = None
) -> tuple[list[int], list[float]]:
    """Trial numbers and the hypervolume of the front of all COMPLETE trials up to each.

    Objectives are normalised with the ideal and nadir point of *all* COMPLETE trials
    (per-objective minimum and maximum), fixed for the whole history, so the curve is
    non-decreasing and comparable along the study. ``reference`` is in those normalised
    units; default :data:`DEFAULT_REFERENCE` = (1.1, 1.1). The largest value possible is
    1.1 x 1.1 = 1.21 (a single point at the ideal).
    """
    ref = np.asarray(DEFAULT_REFERENCE if reference is None else reference, dtype=float)
    trials = _complete(study)
    if not trials:
        return [], []
    points = np.array([t.values for t in trials], dtype=float)
    norm = normalise(points, ideal=points.min(axis=0), nadir=points.max(axis=0))
    numbers, volumes = [], []
    front = np.empty((0, 2))
    for trial, p in zip(trials, norm):
        # Only the running front matters; keeping it small makes the loop O(N * front).
        front = np.vstack([front, p])
        front = front[nondominated_mask(front)]
        numbers.append(trial.number)
        volumes.append(hypervolume(front, ref))
    return numbers, volumes


def hypervolume_history_figure(study: optuna.Study, reference: Sequence[float] | None = None) -> go.Figure:
    """Hypervolume (normalised objectives, see :func:`hypervolume_history`) by trial number."""
    numbers, volumes = hypervolume_history(study, reference)
    ref = DEFAULT_REFERENCE if reference is None else tuple(float(r) for r in reference)
    fig = go.Figure(
        go.Scatter(
            x=numbers,
            y=volumes,
            mode="lines+markers",
            line_shape="hv",
            name="hypervolume",
            hovertemplate="after trial %{x}<br>hypervolume = %{y:.4f}<extra></extra>",
        )
    )
    if not numbers:
        fig.add_annotation(text="no completed trials yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(
        template="plotly_white",
        title=(
            f"Hypervolume of the front, study {study.study_name!r} "
            f"(normalised objectives, reference ({ref[0]:g}, {ref[1]:g}))"
        ),
        xaxis_title="trial number",
        yaxis_title="hypervolume",
    )
    return fig


def pruning_history_figure(trial: FrozenTrial, artifact_store: Any = None) -> go.Figure:
    """Nonzero weights of each penalised layer at the end of every epoch (the trial's history).

    The history is the trial's JSON artifact, read from ``artifact_store`` (the store the
    checkpoints are in), or the ``history`` user attribute of a study made by an older
    motune (see :func:`motune.trials.trial_history`). One line per layer plus a dashed
    ``"total"`` line. A trial without a readable history gives an empty figure with a
    note saying why instead of an error.
    """
    try:
        history = trial_history(trial, artifact_store)
        missing = f"trial {trial.number} has no pruning history"
    except ValueError as exc:
        history, missing = [], str(exc)
    records = [r for r in history if isinstance(r.get("nonzeros_per_layer"), dict)]
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    layers: list[str] = []
    for r in records:
        layers.extend(name for name in r["nonzeros_per_layer"] if name not in layers)
    fig = go.Figure()
    for name in layers:
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[r["nonzeros_per_layer"].get(name) for r in records],
                mode="lines+markers",
                name=name,
                hovertemplate=f"{name}<br>epoch %{{x}}<br>nonzeros = %{{y}}<extra></extra>",
            )
        )
    if layers:
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[sum(v for v in r["nonzeros_per_layer"].values() if _number(v) is not None) for r in records],
                mode="lines",
                name="total",
                line={"dash": "dash", "color": "black"},
                hovertemplate="total<br>epoch %{x}<br>nonzeros = %{y}<extra></extra>",
            )
        )
    else:
        fig.add_annotation(text=missing, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    lam = _fmt(trial_lambda(trial), ".1e", default="-")
    fig.update_layout(
        template="plotly_white",
        title=f"Pruning history of trial {trial.number} ({trial.user_attrs.get('kind', '?')}, λ = {lam})",
        xaxis_title="epoch",
        yaxis_title="nonzero weights",
        yaxis_rangemode="tozero",
    )
    return fig


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a new temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written plot. The temporary file is created with
    ``os.open(..., 0o666)`` rather than :func:`tempfile.mkstemp` (always 0600), so the
    plot gets the permissions a plain ``open()`` would give it (0644 under the usual
    umask 022): plots are meant to be opened by others, e.g. from a shared directory.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plots(
    study: optuna.Study, out_dir: str | os.PathLike[str], knee: FrozenTrial | None = None, artifact_store: Any = None
) -> list[Path]:
    """Write the study's figures as HTML into ``out_dir``; return the HTML paths written.

    Files: ``front.html``, ``accuracy_vs_nonzeros.html``, ``hypervolume.html`` and, when
    a knee is given, ``pruning_history.html`` of the knee trial (its history is read from
    ``artifact_store``, see :func:`pruning_history_figure`; without a knee it is skipped
    with a ``UserWarning``). ``plotly.min.js`` is written beside them once
    (offline use, see the module docstring); it is not in the returned list. Each file
    is written to a temporary name and renamed into place.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, go.Figure]] = [
        ("front.html", front_figure(study, knee)),
        ("accuracy_vs_nonzeros.html", accuracy_sparsity_figure(study, knee)),
        ("hypervolume.html", hypervolume_history_figure(study)),
    ]
    if knee is not None:
        own = [t for t in study.get_trials(deepcopy=False) if t.number == knee.number]
        figures.append(("pruning_history.html", pruning_history_figure(own[0] if own else knee, artifact_store)))
    else:
        warnings.warn("no knee trial: pruning_history.html not written", UserWarning, stacklevel=2)

    _write_atomic(out / "plotly.min.js", get_plotlyjs())  # the HTML files reference it by name
    written = []
    for name, fig in figures:
        path = out / name
        _write_atomic(path, fig.to_html(include_plotlyjs="directory", full_html=True))
        written.append(path)
    return written
