"""Gradual magnitude pruning (motune.gmp): exact sparsity, the schedule, and the GMP trial of a study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import motune
from motune import gmp
from motune.checkpoint import load_checkpoint
from motune.config import ConfigError, StudyConfig
from motune.gmp import GMPSchedule, train_gmp
from motune.models import penalised_parameters
from motune.trials import FAILURE, GMP, Failure, trial_kind


@pytest.fixture(scope="module")
def digits() -> motune.Dataset:
    return motune.load_dataset("digits", limit=200)


def penalised_nonzeros(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(w)) for w in penalised_parameters(model, "dense").values())


@pytest.mark.parametrize("keep", [0, 1, 137, 2000])
def test_gmp_reaches_the_requested_nonzeros_exactly(digits, tmp_path: Path, keep: int) -> None:
    config = motune.TrainConfig(epochs=3, seed=1, limit=200)
    result = train_gmp(config, nonzeros=keep, data=digits)
    assert result.nonzeros == keep and result.penalised_size == 8832
    # ... and so does the network it hands out: count the zeros in its saved checkpoint.
    path = motune.save_checkpoint(tmp_path / "gmp.pt", model=result.model_name, input_shape=result.input_shape,
                                  num_classes=result.num_classes, state_dict=result.state_dict, penalised=result.penalised)
    assert penalised_nonzeros(motune.load_model(path)) == keep
    assert not any(k.endswith(("_orig", "_mask")) for k in result.state_dict)  # masks made permanent


def test_fraction_target_and_a_run_too_short_for_the_schedule(digits) -> None:
    # One epoch of one step: the schedule cannot run, the final prune still lands on the target.
    config = motune.TrainConfig(epochs=1, batch_size=1024, seed=0, limit=200)
    result = train_gmp(config, fraction_kept=0.25, data=digits)
    assert result.nonzeros == round(0.25 * 8832) and result.fraction_kept == pytest.approx(0.25, abs=1e-4)
    with pytest.raises(ValueError, match="exactly one of"):
        train_gmp(config, data=digits)
    with pytest.raises(ValueError, match="nonzeros: must be an integer in"):
        train_gmp(config, nonzeros=10**6, data=digits)


def test_gmp_and_train_start_from_the_same_network(digits) -> None:
    # Same seed: same initial weights and batches; with nothing pruned and no l1 term they train the same network.
    config = motune.TrainConfig(epochs=2, seed=3, limit=200, l1_weight=0.0, prune_policy="none")
    plain = motune.train(config, data=digits)
    full = train_gmp(config, fraction_kept=1.0, data=digits)
    assert all(torch.equal(plain.state_dict[k], v) for k, v in full.state_dict.items())


@pytest.mark.parametrize("steps_per_epoch,epochs", [(1, 1), (1, 3), (3, 2), (8, 6), (17, 30), (391, 15)])
def test_schedule_is_cubic_monotone_and_ends_inside_the_run(steps_per_epoch: int, epochs: int) -> None:
    s = GMPSchedule.for_run(steps_per_epoch, epochs)
    levels = [s.sparsity(t, 0.9) for t in range(1, s.total + 1)]
    reached = [v for v in levels if v is not None]
    assert reached == sorted(reached)
    if s.end <= s.total:
        assert reached[-1] == pytest.approx(0.9) and s.sparsity(s.end, 0.9) == pytest.approx(0.9)


def test_gmp_is_a_study_baseline_with_the_full_fidelity_training() -> None:
    config = StudyConfig.from_dict({"study": {"baselines": ["smgd", "gmp"]}})
    cfg = config.train_config(GMP, full=True, seed=4)
    assert cfg.method == "weighted_sum" and cfg.l1_weight == 0.0 and cfg.epochs == config.train.epochs and cfg.seed == 4
    with pytest.raises(ConfigError, match="allowed: smgd, multi_adam, multi_rmsprop, gmp"):
        StudyConfig.from_dict({"study": {"baselines": ["gmpp"]}})


# ----------------------------------------------------------------------------- in a study

SMALL_GMP = """
[study]
name = "gmpstudy"
n_trials = 10
baselines = ["gmp"]

[data]
dataset = "digits"

[train]
epochs = 6
front_epochs = 3
"""


@pytest.fixture(scope="module")
def gmp_run(tmp_path_factory: pytest.TempPathFactory):
    """A digits study with baselines = ["gmp"], run through the CLI once."""
    from motune.cli import main

    work = tmp_path_factory.mktemp("gmp")
    (work / "gmp.toml").write_text(SMALL_GMP)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        code = main(["run", "gmp.toml", "--quiet"])
    study = optuna.load_study(study_name="gmpstudy", storage=f"sqlite:///{work / 'gmpstudy.db'}")
    return work, code, study


def test_study_ends_with_one_gmp_trial_after_the_knee_at_its_sparsity(gmp_run) -> None:
    work, code, study = gmp_run
    assert code == 0
    knee = motune.knee_trial(study)
    assert knee is not None and knee.user_attrs["fidelity"] == "full"
    runs = [t for t in study.get_trials() if trial_kind(t) == GMP]
    assert len(runs) == 1 and runs[0].state == TrialState.COMPLETE
    g = runs[0]
    assert g.number > knee.number and g.user_attrs[gmp.KNEE_TRIAL] == knee.number
    assert g.user_attrs["nonzeros"] == g.user_attrs[gmp.TARGET_NONZEROS] == knee.user_attrs["nonzeros"]
    assert g.user_attrs["epochs"] == knee.user_attrs["epochs"] == 6 and g.user_attrs["seed"] == knee.user_attrs["seed"]
    checkpoint = load_checkpoint(work / "gmpstudy-artifacts" / g.user_attrs["checkpoint"])
    assert checkpoint["metadata"]["kind"] == "gmp"
    assert penalised_nonzeros(motune.load_model(work / "gmpstudy-artifacts" / g.user_attrs["checkpoint"])) \
        == knee.user_attrs["nonzeros"]


def test_status_prints_the_knee_against_gmp(gmp_run, run_motune) -> None:
    work, _, study = gmp_run
    code, out, err = run_motune(work, "status", "--storage", "sqlite:///gmpstudy.db")
    assert code == 0, err
    knee = motune.knee_trial(study)
    g = gmp.comparison(study, knee)
    delta = 100 * (knee.user_attrs["val_accuracy"] - g.user_attrs["val_accuracy"])
    assert f"knee vs GMP at the same sparsity: Δ accuracy (knee − GMP) {delta:+.2f} pp val" in out
    assert f"(GMP trial {g.number}:" in out


def test_export_and_plots_show_the_gmp_trial(gmp_run, run_motune) -> None:
    import json

    work, _, study = gmp_run
    code, _, err = run_motune(work, "export", "--storage", "sqlite:///gmpstudy.db", "--out", "exported")
    assert code == 0, err
    rows = json.loads((work / "exported" / "pareto.json").read_text())["rows"]
    assert [r["trial"] for r in rows if r["kind"] == "gmp"] == [gmp.comparison(study, motune.knee_trial(study)).number]
    code, _, err = run_motune(work, "plot", "--storage", "sqlite:///gmpstudy.db", "--out", "plots")
    assert code == 0, err
    assert "GMP at the knee's sparsity" in (work / "plots" / "front.html").read_text()


def test_two_workers_train_one_gmp_trial(tmp_path: Path, run_motune) -> None:
    # A larger budget: with two workers the guesses of the idle one count too; the search must converge within it.
    (tmp_path / "gmp.toml").write_text(SMALL_GMP.replace("n_trials = 10", "n_trials = 30"))
    code, _, err = run_motune(tmp_path, "run", "gmp.toml", "--workers", "2", "--quiet")
    assert code == 0, err
    study = optuna.load_study(study_name="gmpstudy", storage=motune.open_storage(f"journal:{tmp_path / 'gmpstudy.journal'}"))
    knee = motune.knee_trial(study)
    runs = [t for t in study.get_trials() if trial_kind(t) == GMP and t.state == TrialState.COMPLETE]
    assert len(runs) == 1 and runs[0].user_attrs[gmp.KNEE_TRIAL] == knee.number
    assert runs[0].user_attrs["nonzeros"] == knee.user_attrs["nonzeros"]


def test_a_second_gmp_trial_for_the_same_knee_does_not_run(gmp_run, run_motune) -> None:
    work, _, study = gmp_run
    knee = motune.knee_trial(study)
    study.enqueue_trial({}, user_attrs=gmp.trial_attrs(knee))  # as a second worker racing the first would
    code, _, err = run_motune(work, "run", "gmp.toml", "--quiet")
    assert code == 0, err
    runs = [t for t in study.get_trials() if trial_kind(t) == GMP]
    assert [t.state for t in runs] == [TrialState.COMPLETE, TrialState.FAIL]
    assert runs[1].user_attrs[FAILURE] == Failure.NOT_RUN.value and f"trial {runs[0].number}" in runs[1].user_attrs["fail_reason"]


def test_without_the_baseline_status_says_how_to_get_it(tiny_study) -> None:
    from motune.report import gmp_line

    study = tiny_study.study
    knee = next(t for t in study.get_trials() if t.number == study.user_attrs["tiny_study"]["knee_trial"])
    assert 'add "gmp" to [study] baselines' in gmp_line(study, knee, StudyConfig())
    with_gmp = StudyConfig.from_dict({"study": {"baselines": ["gmp"]}})
    assert "the next `motune run` or worker" in gmp_line(study, knee, with_gmp)
    assert "runs once the search has converged" in gmp_line(study, knee, with_gmp, converged=False)
