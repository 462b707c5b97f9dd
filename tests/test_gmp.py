"""GMP: exact sparsity, the cubic schedule, and the gmp baseline trial of a study (queued once, after the knee)."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import motune
from motune.gmp import GMPSchedule, enqueue_for_knee, gmp_trials, prune_to, train_gmp
from motune.study import _gmp_after_knee
from motune.trials import CHECKPOINT, CONFIG_ATTR, FAIL_REASON, GMP, GMP_OF, GMP_TARGET, PARAM, is_full, trial_kind


@pytest.fixture(scope="module")
def digits() -> motune.Dataset:
    return motune.load_dataset("digits", limit=200)


@pytest.mark.parametrize("fraction", [0.0, 0.013, 0.1, 0.5, 1.0])
def test_train_gmp_keeps_exactly_the_requested_share(digits: motune.Dataset, fraction: float) -> None:
    result = train_gmp(motune.TrainConfig(dataset="digits", epochs=2), fraction, data=digits)
    size = result.penalised_size
    zeros = sum(int((result.state_dict[name] == 0).sum()) for name in result.penalised)
    assert zeros == round((1 - fraction) * size)
    assert result.nonzeros == size - zeros and result.fraction_kept == pytest.approx((size - zeros) / size)
    assert all(not k.endswith(("_orig", "_mask")) for k in result.state_dict)  # plain weights, loadable
    assert len(result.history) == 2


def test_prune_to_only_grows_the_masks() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    layers = [(net[0], "weight"), (net[2], "weight")]
    prune_to(layers, 30)
    first = net[0].weight_mask.clone()
    prune_to(layers, 60)
    prune_to(layers, 40)  # fewer than already masked: nothing changes
    masked = sum(int((m.weight_mask == 0).sum()) for m, _ in layers)
    assert masked == 60 and bool(((first == 0) <= (net[0].weight_mask == 0)).all())


def test_schedule_is_cubic_and_ends_at_the_final_sparsity() -> None:
    s = GMPSchedule.for_run(total_steps=1000, steps_per_epoch=100, fraction=0.05)
    steps = [t for t in range(1, 1001) if s.sparsity(t) is not None]
    values = [s.sparsity(t) for t in steps]
    assert steps[0] == 100 and steps[-1] <= 2 * 1000 // 3 and values[0] == 0.0
    assert values[-1] == pytest.approx(0.95) and values == sorted(values)
    short = GMPSchedule.for_run(total_steps=3, steps_per_epoch=3, fraction=0.5)  # too short for t0 = one epoch
    assert short.t0 == 1 and short.sparsity(short.t0 + short.n * short.delta_t) == pytest.approx(0.5)


# Fresh front trials of 2 epochs on all of digits: a front well enough shaped that the search
# converges (7 front trials on an AMD EPYC, 1 or 2 threads) well within the budget. With 300
# images and 1-epoch trials the front was noise and convergence depended on the CPU's
# floating-point sums (within 8 trials on a Xeon, not within 8 or 12 on the EPYC).
SMALL_GMP = """
[study]
name = "g"
n_trials = 16
baselines = ["gmp"]
continuation = false

[data]
dataset = "digits"

[train]
epochs = 3
front_epochs = 2
"""


@pytest.fixture(scope="module")
def gmp_run(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("gmp")
    (work / "g.toml").write_text(SMALL_GMP)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        code = motune.cli.main(["run", "g.toml", "--quiet"])
    return work, code, optuna.load_study(study_name="g", storage=f"sqlite:///{work}/g.db")


def test_study_ends_with_one_gmp_trial_after_the_knee(gmp_run) -> None:
    _, code, study = gmp_run
    assert code == 0
    knee = motune.knee_trial(study)
    assert knee is not None and is_full(knee)
    gmps = gmp_trials(study)
    assert len(gmps) == 1 and gmps[0].state == TrialState.COMPLETE
    g = gmps[0]
    assert g.number > knee.number and g.user_attrs[GMP_OF] == knee.number
    assert g.user_attrs[GMP_TARGET] == knee.user_attrs["fraction_kept"]
    assert g.user_attrs["nonzeros"] == knee.user_attrs["nonzeros"]  # same sparsity, exactly
    assert g.user_attrs["epochs"] == knee.user_attrs["epochs"] == 3
    assert g.user_attrs["seed"] == knee.user_attrs["seed"]  # paired: same initial weights and batch order
    assert PARAM not in g.params and CHECKPOINT in g.user_attrs and "test_accuracy" in g.user_attrs
    assert enqueue_for_knee(study, knee) is False  # queued once: a second call finds it


def test_status_prints_knee_vs_gmp(gmp_run, run_motune) -> None:
    work, _, study = gmp_run
    code, out, _ = run_motune(work, "status", "--storage", "sqlite:///g.db")
    knee, g = motune.knee_trial(study), gmp_trials(study)[0]
    delta = 100 * (knee.user_attrs["test_accuracy"] - g.user_attrs["test_accuracy"])
    line = next(x for x in out.splitlines() if x.startswith("knee vs GMP at the same sparsity: Δ accuracy"))
    assert code == 0 and f"{delta:+.2f} pp test" in line and f"GMP trial {g.number}" in line


def test_plots_mark_the_gmp_trial_as_gmp(gmp_run, run_motune) -> None:
    work, _, _ = gmp_run
    code, _, err = run_motune(work, "plot", "--storage", "sqlite:///g.db", "--out", "plots")
    front = (work / "plots" / "front.html").read_text()
    assert code == 0, err
    assert "GMP at the knee's sparsity" in front and "SMGD / multi-gradient" not in front  # no multi-gradient trial here


def test_export_select_writes_only_the_selected_checkpoint(gmp_run, run_motune) -> None:
    work, _, study = gmp_run
    code, _, err = run_motune(work, "export", "--storage", "sqlite:///g.db", "--out", "sel", "--select")
    assert code == 0, err
    doc = json.loads((work / "sel" / "pareto.json").read_text())
    knee = motune.knee_trial(study)
    assert doc["selected_trial"] == knee.number
    assert [p.name for p in (work / "sel" / "checkpoints").iterdir()] == [f"trial-{knee.number:04d}.pt"]
    assert [r["trial"] for r in doc["rows"] if r["checkpoint"]] == [knee.number]
    assert motune.load_model(work / "sel" / "checkpoints" / f"trial-{knee.number:04d}.pt") is not None


def test_the_gmp_trial_is_queued_once_the_knee_is_retrained_and_only_once(gmp_run) -> None:
    """What each worker does after its own trial: nothing before the knee's retrain, then queue it once."""
    _, _, finished = gmp_run
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr(CONFIG_ATTR, finished.user_attrs[CONFIG_ATTR])
    after = _gmp_after_knee(motune.StudyConfig.from_dict(finished.user_attrs[CONFIG_ATTR]))
    trials = [t for t in finished.get_trials() if trial_kind(t) != GMP]
    retrain = next(t for t in trials if is_full(t) and trial_kind(t) == "weighted_sum")
    for t in trials:
        if t.number != retrain.number:
            study.add_trial(t)
            after(study, study.trials[-1])  # the search has not converged: nothing queued
    assert gmp_trials(study) == []
    study.add_trial(retrain)
    after(study, study.trials[-1])
    after(study, study.trials[0])  # another worker's trial, or a resumed caller: finds it
    knee = motune.knee_trial(study)
    queued = gmp_trials(study)
    assert len(queued) == 1 and queued[0].state == TrialState.WAITING
    assert queued[0].user_attrs[GMP_OF] == knee.number and queued[0].user_attrs[GMP_TARGET] == knee.user_attrs["fraction_kept"]


def test_unknown_baseline_lists_gmp() -> None:
    with pytest.raises(motune.ConfigError, match="allowed: smgd, multi_adam, multi_rmsprop, gmp"):
        motune.StudyConfig.from_dict({"study": {"baselines": ["magnitude"]}})


def _without_gmp(finished: optuna.Study, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """A copy of ``finished`` in ``storage`` (trials and attributes) with no GMP trial: the knee retrained, none queued."""
    study = optuna.create_study(storage=storage, study_name="g", directions=["minimize", "minimize"])
    for t in finished.get_trials():
        if trial_kind(t) != GMP:
            study.add_trial(t)
    for key, value in finished.user_attrs.items():
        study.set_user_attr(key, value)
    return study


def test_a_resumed_study_queues_a_gmp_trial_lost_with_its_worker(gmp_run, tmp_path) -> None:
    """The worker that completed the knee died before queueing: the next run queues and trains it."""
    _, _, finished = gmp_run
    storage = optuna.storages.InMemoryStorage()
    study = _without_gmp(finished, storage)
    config = motune.StudyConfig.from_dict(finished.user_attrs[CONFIG_ATTR])
    assert gmp_trials(study) == []
    motune.run_study(config, storage, artifact_dir=tmp_path)
    gmps = gmp_trials(study)
    assert len(gmps) == 1 and gmps[0].state == TrialState.COMPLETE
    assert gmps[0].user_attrs[GMP_OF] == motune.knee_trial(study).number


def test_a_gmp_trial_queued_twice_runs_once(gmp_run, tmp_path) -> None:
    """Two workers resuming at once may both queue the knee's GMP trial: the first runs, the second is not run."""
    _, _, finished = gmp_run
    storage = optuna.storages.InMemoryStorage()
    study = _without_gmp(finished, storage)
    knee = motune.knee_trial(study)
    assert enqueue_for_knee(study, knee)
    attrs = gmp_trials(study)[0].user_attrs
    study.enqueue_trial({}, user_attrs=dict(attrs), skip_if_exists=False)  # the other worker's copy
    motune.run_study(motune.StudyConfig.from_dict(finished.user_attrs[CONFIG_ATTR]), storage, artifact_dir=tmp_path)
    first, second = gmp_trials(study)
    assert first.state == TrialState.COMPLETE and first.user_attrs[GMP_OF] == knee.number
    assert second.state == TrialState.FAIL
    assert second.user_attrs[FAIL_REASON] == f"not run: GMP trial {first.number} already compares the same knee"
