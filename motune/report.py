"""What the console shows: the per-trial table, progress bars, the study summary.

The CLI's ``run``, ``worker`` and ``status`` print through these, so a trial looks the
same wherever it is shown. Reads trials through :mod:`motune.trials`' vocabulary.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from motune.config import StudyConfig
from motune.gmp import gmp_trials
from motune.storage import is_journal_file, mask_url
from motune.study import knee_trial, summarize
from motune.trials import FAIL_REASON, FAILURE, FIDELITY, GMP, INTERMEDIATES, KIND, PRUNE_REASON, Failure, trial_lambda


def dashboard_command(url: str, artifact_dir: Path) -> str:
    """The exact optuna-dashboard command line for this storage."""
    target = url.removeprefix("journal:") if is_journal_file(url) else url
    return f"optuna-dashboard {mask_url(target)} --artifact-dir {artifact_dir}"


def fmt_lambda(lam: float | None) -> str:
    return "-" if lam is None else f"{lam:.2e}"


def trial_line(t: FrozenTrial, knee: FrozenTrial | None = None) -> str:
    a = t.user_attrs
    star = "*" if knee is not None and t.number == knee.number else " "
    size = a.get("penalised_size") or 0
    return (
        f"{star}{t.number:>5} {a.get(KIND, '?'):<13} {a.get(FIDELITY, '?'):<6} {fmt_lambda(trial_lambda(t)):>9} "
        f"{t.values[0]:>8.4f} {t.values[1]:>10.2f} {100 * a.get('val_accuracy', float('nan')):>7.2f}% "
        f"{a.get('nonzeros', 0):>8}/{size:<8} {100 * a.get('fraction_kept', float('nan')):>6.2f}%"
    )


TABLE_HEAD = (
    f" {'trial':>5} {'kind':<13} {'fid.':<6} {'lambda':>9} {'f1 (CE)':>8} {'f2 (l1)':>10} {'val acc':>8} "
    f"{'nonzeros':>17} {'kept':>7}"
)


def pruned_line(t: FrozenTrial) -> str:
    """A PRUNED trial in the table's columns: its last intermediate (CE, l1, accuracy) and why it stopped."""
    a = t.user_attrs
    rows = a.get(INTERMEDIATES) or [[0, math.nan, math.nan, math.nan]]
    _, ce, l1, acc = rows[-1]
    return (
        f" {t.number:>5} {a.get(KIND, '?'):<13} {a.get(FIDELITY, '?'):<6} {fmt_lambda(trial_lambda(t)):>9} "
        f"{ce:>8.4f} {l1:>10.2f} {100 * acc:>7.2f}%  pruned after {len(rows)} epoch{'s' * (len(rows) != 1)}: "
        f"{a.get(PRUNE_REASON, 'no reason recorded')}"
    )


def print_summary(study: optuna.Study, config: StudyConfig, out: Any = None) -> None:
    """Trials by state, the Pareto table (knee starred), hypervolume, pruned trials with their reasons."""
    out = out or sys.stdout
    s = summarize(study, config)
    states = ", ".join(f"{n} {k.lower()}" for k, n in s.states.items()) or "no trials"
    print(f"study {s.study_name!r}: {states}", file=out)
    print(f"Pareto front: {s.front_size} trials; hypervolume (normalised, ref 1.1) {s.hypervolume:.4f}; "
          f"search {'converged' if s.converged else 'not converged'}", file=out)
    rows = list(s.pareto)
    if s.knee is not None and all(t.number != s.knee.number for t in rows):
        rows.append(s.knee)
    if rows:
        print(TABLE_HEAD, file=out)
        for t in sorted(rows, key=lambda t: t.values[0]):
            print(trial_line(t, s.knee), file=out)
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if pruned:
        print("pruned trials (stopped early; last epoch's f1, f2, val acc):", file=out)
        for t in pruned:
            print(pruned_line(t), file=out)
    if s.knee is not None:
        k = s.knee
        print(
            f"knee: trial {k.number} (lambda {fmt_lambda(trial_lambda(k))}, {k.user_attrs.get(FIDELITY)}): "
            f"val accuracy {100 * k.user_attrs['val_accuracy']:.2f}%, test accuracy {100 * k.user_attrs['test_accuracy']:.2f}%, "
            f"{k.user_attrs['nonzeros']} of {k.user_attrs['penalised_size']} penalised weights kept "
            f"({100 * k.user_attrs['fraction_kept']:.2f}%)",
            file=out,
        )
    else:
        print("knee: none yet", file=out)
    if GMP in config.study.baselines:
        print(gmp_line(study, s.knee), file=out)


def gmp_line(study: optuna.Study, knee: FrozenTrial | None) -> str:
    """'knee vs GMP at the same sparsity: Δ accuracy ...' (test and val, in percentage points), or why there is none."""
    head = "knee vs GMP at the same sparsity:"
    done = [t for t in gmp_trials(study, knee.number) if t.state == TrialState.COMPLETE] if knee is not None else []
    if not done:
        return f"{head} no GMP trial yet (it is queued when the knee's full-fidelity retrain completes)"
    g, k = done[-1].user_attrs, knee.user_attrs
    delta = {split: 100 * (k[f"{split}_accuracy"] - g[f"{split}_accuracy"]) for split in ("test", "val")}
    return (f"{head} Δ accuracy {delta['test']:+.2f} pp test, {delta['val']:+.2f} pp val "
            f"(knee trial {knee.number} {100 * k['test_accuracy']:.2f}% at {100 * k['fraction_kept']:.2f}% kept; "
            f"GMP trial {done[-1].number} {100 * g['test_accuracy']:.2f}% at {100 * g['fraction_kept']:.2f}% kept, "
            f"{g.get('epochs', '?')} epochs)")


class Progress:
    """Console progress: one epoch bar per trial (tqdm) and one line per finished trial."""

    def __init__(self, target: int, config: StudyConfig, enabled: bool = True) -> None:
        self.target, self.config, self.enabled = target, config, enabled
        self.bar: Any = None

    def on_start(self, trial: optuna.Trial, kind: str, lam: float | None, epochs: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        done = len(trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        label = f"trial {trial.number} ({done + 1} of {self.target}) {kind}" + (f" λ={lam:.2e}" if lam is not None else "")
        self.bar = tqdm(total=epochs, desc=label, unit="epoch", leave=False, file=sys.stderr, dynamic_ncols=True)

    def on_epoch(self, trial: optuna.Trial, record: Any, epochs: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record.train_loss:.3f}", nonzeros=record.nonzeros, refresh=False)
            self.bar.update(1)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.enabled:
            return
        if trial.state == TrialState.COMPLETE:
            knee = knee_trial(study, self.config)
            print(trial_line(trial) + f"  {trial.user_attrs.get('seconds', 0):.1f}s  knee: "
                  + (f"trial {knee.number}" if knee else "-"), flush=True)
        elif trial.state == TrialState.PRUNED:
            print(pruned_line(trial), flush=True)
        elif trial.user_attrs.get(FAILURE) != Failure.NOT_RUN:  # not run: another worker filled the budget
            print(fail_line(trial), flush=True)


def fail_line(trial: FrozenTrial) -> str:
    return f" {trial.number:>5} {trial.state.name.lower()} {trial.user_attrs.get(FAIL_REASON, '')}"




def print_new_trials(study: optuna.Study, shown: set[int]) -> None:
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and t.number not in shown:
            shown.add(t.number)
            if t.state == TrialState.COMPLETE:
                print(trial_line(t), flush=True)
            elif t.state == TrialState.PRUNED:
                print(pruned_line(t), flush=True)
            elif t.user_attrs.get(FAILURE) != Failure.NOT_RUN:
                print(fail_line(t), flush=True)
