"""Warm-start continuation along λ (motune.continuation): parent choice, exact weights, fallbacks, pruning reference."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import motune.study
from motune import ConfigError, StudyConfig, TrainConfig, load_dataset, train
from motune.checkpoint import load_checkpoint
from motune.continuation import UNPLANNED, choose_parent, wait_for_parent, warm_start
from motune.faults import HEARTBEAT_ATTR
from motune.plots import front_figure
from motune.sampler import FIDELITY_ATTR, PARENT_ATTR
from motune.study import run_study
from motune.trial_pruning import FrontPruner, Intermediate, compact, reference_intermediates
from motune.trials import CHECKPOINT, FIDELITY, INTERMEDIATES, KIND, PARAM, WARM_START_FROM, WARM_START_NOTE


def tiny_config(continuation: bool = True, **study: Any) -> StudyConfig:
    """Digits (150 images a split), front trials of 2 epochs, children of 1, no baselines, no retrain, no pruning."""
    return StudyConfig.from_dict({
        "study": {"name": "cont", "n_trials": 3, "start_weights": [0.0, 2e-3], "baselines": [], "full_fidelity": False,
                  "prune": False, "continuation": continuation, "continuation_epochs": 1, **study},
        "data": {"dataset": "digits", "limit": 150},
        "train": {"epochs": 2, "front_epochs": 2, "device": "cpu"},
    })


def by_lambda(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (t.params[PARAM], t.number))


def run(config: StudyConfig, tmp_path: Path, n_trials: int | None = None) -> optuna.Study:
    return run_study(config, f"sqlite:///{tmp_path / 'c.db'}", artifact_dir=tmp_path / "art", n_trials=n_trials)


def test_a_child_starts_from_its_parents_exact_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[float, dict[str, torch.Tensor] | None] = {}
    real_train = motune.study.train

    def spy(cfg: TrainConfig, **kwargs: Any) -> Any:
        started[cfg.l1_weight] = kwargs.get("init_state")
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(motune.study, "train", spy)
    study = run(tiny_config(), tmp_path)
    trials = by_lambda(study)
    assert len(trials) == 3
    first = trials[0]
    assert first.params[PARAM] == 0.0 and first.user_attrs[WARM_START_FROM] is None and started[0.0] is None
    assert first.user_attrs["epochs"] == 2
    for child in trials[1:]:
        parent_number = child.user_attrs[WARM_START_FROM]
        parent = study.trials[parent_number]
        assert parent.params[PARAM] < child.params[PARAM]
        # the parent is the nearest smaller λ among the trials completed before the child
        earlier = [t for t in trials if t.number < child.number and t.params[PARAM] < child.params[PARAM]]
        assert parent.params[PARAM] == max(t.params[PARAM] for t in earlier)
        assert child.user_attrs["epochs"] == 1  # continuation_epochs, not front_epochs
        saved = load_checkpoint(tmp_path / "art" / parent.user_attrs[CHECKPOINT])["state_dict"]
        init = started[child.params[PARAM]]
        assert init is not None and init.keys() == saved.keys()
        assert all(torch.equal(init[k], saved[k]) for k in saved)
    # the front figure draws the parent -> child path
    fig = front_figure(study)
    path = [tr for tr in fig.data if tr.name == "continuation path"]
    assert len(path) == 1 and len([x for x in path[0].x if x is not None]) == 2 * (len(trials) - 1)


def test_train_loads_init_state_before_training() -> None:
    data = load_dataset("digits", limit=100)
    # a step too small to move any float32 weight, no penalty, no pruning: the weights stay what was loaded
    cfg = TrainConfig(dataset="digits", limit=100, epochs=1, optimizer="sgd", lr=1e-30, momentum=0.0,
                      prune_policy="none", device="cpu", seed=3)
    other = train(cfg.replace(seed=7, lr=1e-2), data=data).state_dict
    result = train(cfg, data=data, init_state=other)
    assert all(torch.equal(result.state_dict[k], other[k]) for k in other)
    fresh = train(cfg, data=data)
    assert not all(torch.equal(fresh.state_dict[k], other[k]) for k in other)


def _frozen(number: int, lam: float | None, fidelity: str = "front", kind: str = "weighted_sum",
            checkpoint: bool = True, state: TrialState = TrialState.COMPLETE, **extra: Any) -> optuna.trial.FrozenTrial:
    attrs: dict[str, Any] = {KIND: kind, FIDELITY: fidelity, **extra}
    if checkpoint:
        attrs[CHECKPOINT] = f"id-{number}"
    t = create_trial(state=state, values=[1.0, 1.0] if state == TrialState.COMPLETE else None,
                     params={} if lam is None else {PARAM: lam},
                     distributions={} if lam is None else {PARAM: FloatDistribution(0.0, 1.0)}, user_attrs=attrs)
    t.number = number
    return t


def test_the_parent_is_the_nearest_smaller_lambda_at_the_same_fidelity() -> None:
    trials = [
        _frozen(0, 0.0),
        _frozen(1, 1e-4),
        _frozen(2, 5e-4, fidelity="full"),  # nearer, but another fidelity
        _frozen(3, 2e-4, checkpoint=False),  # nearer, but no checkpoint to start from
        _frozen(4, 3e-4, state=TrialState.FAIL),  # nearer, but not complete
        _frozen(5, None, kind="smgd"),  # a baseline: no λ
        _frozen(6, 1e-3),  # larger
        _frozen(7, 1e-4),  # a tie with trial 1: the lower number wins
    ]
    assert choose_parent(trials, 6e-4, "front").number == 1
    assert choose_parent(trials, 1e-3, "front").number == 1  # strictly smaller: not itself
    assert choose_parent(trials, 2e-3, "front").number == 6
    assert choose_parent(trials, 0.0, "front") is None
    assert choose_parent(trials, 1e-3, "full").number == 2
    assert choose_parent(trials, 1e-4, "full") is None
    assert choose_parent(trials, 1e-3, "front", inclusive=True).number == 6  # the same λ counts: the knee's retrain


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_parent_checkpoint_falls_back_to_a_fresh_start(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_config(n_trials=2)
    study = run(config, tmp_path, n_trials=1)
    (parent,) = study.get_trials(states=(TrialState.COMPLETE,))
    artifact = tmp_path / "art" / parent.user_attrs[CHECKPOINT]
    if damage == "missing":
        artifact.unlink()
    else:
        artifact.write_bytes(b"not a checkpoint at all")
    with caplog.at_level(logging.WARNING, logger="motune.continuation"):
        study = run(config, tmp_path, n_trials=2)
    child = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.number != parent.number)
    assert child.user_attrs[WARM_START_FROM] is None
    assert child.user_attrs["epochs"] == 2  # a fresh front trial's length
    note = child.user_attrs[WARM_START_NOTE]
    assert f"trial {parent.number}" in note and "trained fresh" in note
    assert any("trained fresh" in r.getMessage() for r in caplog.records)


def test_continuation_off_means_no_parent(tmp_path: Path) -> None:
    study = run(tiny_config(continuation=False, n_trials=2), tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        assert t.user_attrs[WARM_START_FROM] is None and WARM_START_NOTE not in t.user_attrs
        assert t.user_attrs["epochs"] == 2


@pytest.mark.parametrize("bad", [0, 3])
def test_continuation_epochs_out_of_range_names_the_key(bad: int) -> None:
    with pytest.raises(ConfigError, match=r"study\.continuation_epochs"):
        tiny_config(continuation_epochs=bad)


def test_the_knee_retrain_continues_from_the_knees_own_front_network(tmp_path: Path) -> None:
    config = tiny_config(n_trials=2)
    study = run(config, tmp_path)
    front = by_lambda(study)
    assert [t.params[PARAM] for t in front] == [0.0, 2e-3]
    store = FileSystemArtifactStore(str(tmp_path / "art"))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    start = warm_start(config, done, "weighted_sum", "full", 2e-3, store)
    # its own λ (not the nearest smaller), at the full length (epochs None: the fidelity's)
    assert start.parent == front[1].number and start.warm and start.epochs is None
    saved = load_checkpoint(tmp_path / "art" / front[1].user_attrs[CHECKPOINT])["state_dict"]
    assert all(torch.equal(start.state[k], saved[k]) for k in saved)  # type: ignore[index]
    off = warm_start(tiny_config(continuation=False), done, "weighted_sum", "full", 2e-3, store)
    assert off.parent is None and not off.warm and off.attrs() == {WARM_START_FROM: None}
    # [study] retrain_epochs shortens the continued retrain (a front child keeps continuation_epochs)
    short = tiny_config(n_trials=2, retrain_epochs=1, continuation_epochs=2)
    assert warm_start(short, done, "weighted_sum", "full", 2e-3, store).epochs == 1
    assert warm_start(short, done, "weighted_sum", "front", 3e-3, store).epochs == 2


@pytest.mark.parametrize("bad", [0, 3])
def test_retrain_epochs_out_of_range_names_the_key(bad: int) -> None:
    with pytest.raises(ConfigError, match=r"study\.retrain_epochs: must be more than the fine-tune"):
        tiny_config(retrain_epochs=bad)


def test_trial_pruning_compares_warm_started_trials_only_with_warm_started_ones() -> None:
    def rows(ce: float, l1: float) -> list[list[float]]:
        return compact([Intermediate(1, ce, l1, 0.9), Intermediate(2, ce, l1, 0.9)])

    trials = [
        _frozen(0, 0.0, **{INTERMEDIATES: rows(0.3, 100.0), WARM_START_FROM: None}),  # fresh, far better than the child
        _frozen(1, 1e-2, **{INTERMEDIATES: rows(1.5, 10.0), WARM_START_FROM: None}),  # fresh
        _frozen(2, 1e-3, **{INTERMEDIATES: rows(1.2, 600.0), WARM_START_FROM: 0}),  # warm-started
        _frozen(3, 2e-3, **{INTERMEDIATES: rows(2.0, 300.0), WARM_START_FROM: 1}),  # warm-started
        _frozen(4, 5e-3, **{INTERMEDIATES: rows(0.3, 100.0)}),  # an older trial with no warm-start record: fresh
    ]
    assert sorted(reference_intermediates(trials, "front")) == [0, 1, 4]
    assert sorted(reference_intermediates(trials, "front", warm_started=True)) == [2, 3]
    # a warm-started child dominated by the fresh trials (by far) is not pruned: they are not its reference
    child = [Intermediate(1, 1.0, 500.0, 0.7), Intermediate(2, 1.0, 500.0, 0.7)]
    pruner = FrontPruner(patience=2, margin=0.1)
    assert pruner.prune(child, reference_intermediates(trials, "front"), num_classes=10, epochs=10) is not None
    assert pruner.prune(child, reference_intermediates(trials, "front", warm_started=True), num_classes=10, epochs=10) is None
    # collapse detection still applies to a warm-started trial
    dead = [Intermediate(1, 2.3, 10.0, 0.1), Intermediate(2, 2.3, 5.0, 0.1)]
    decision = pruner.prune(dead, reference_intermediates(trials, "front", warm_started=True), num_classes=10, epochs=10)
    assert decision is not None and decision.collapsed


def test_finetune_for_the_knee_retrain_only() -> None:
    both = StudyConfig.from_dict({"study": {"baselines": ["smgd"], "finetune_baselines": True},
                                  "train": {"finetune_epochs": 3}})
    knee_only = StudyConfig.from_dict({"study": {"baselines": ["smgd"]}, "train": {"finetune_epochs": 3}})  # the default
    assert both.train_config("smgd", full=True).finetune_epochs == 3
    assert knee_only.train_config("smgd", full=True).finetune_epochs == 0
    for config in (both, knee_only):
        assert config.train_config("weighted_sum", full=True).finetune_epochs == 3  # the knee's retrain
        assert config.train_config("weighted_sum").finetune_epochs == 0  # front trials never fine-tune


def test_with_trial_pruning_on_a_child_is_judged_against_warm_started_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[int, bool] = {}
    real = motune.study.TrialMonitor.for_trial.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, trial: optuna.Trial, *args: Any, warm_started: bool = False, **kwargs: Any) -> Any:
        seen[trial.number] = warm_started
        return real(cls, trial, *args, warm_started=warm_started, **kwargs)

    monkeypatch.setattr(motune.study.TrialMonitor, "for_trial", classmethod(spy))
    study = run(tiny_config(prune=True), tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        assert seen[t.number] == (t.user_attrs[WARM_START_FROM] is not None)
        assert t.user_attrs[INTERMEDIATES]  # evaluated every epoch for the pruner
    assert sum(seen.values()) == 2  # both children warm-started


def test_a_planned_parent_weight_decides_the_parent_whatever_else_has_finished(tmp_path: Path) -> None:
    """The sampler's ``knee:parent_weight`` (what the one-worker search had read), not what happens to be done."""
    trials = [_frozen(0, 0.0), _frozen(1, 1e-4), _frozen(2, 5e-4)]
    store = FileSystemArtifactStore(str(tmp_path))  # the checkpoints are not there: the choice is what is tested

    def parent(planned: float | str | None) -> int | None:
        return warm_start(tiny_config(), trials, "weighted_sum", "front", 1e-3, store, planned).parent

    assert parent(1e-4) == 1  # trial 2 finished too, but the search had not read it when it asked for 1e-3
    assert parent(None) is None  # it had read nothing below: a fresh start, whatever finished since
    assert parent(3e-4) == 1  # the planned parent was pruned or failed: the nearest completed below it
    assert parent(UNPLANNED) == 2  # planned by someone else: the nearest smaller λ completed now


def _running(study: optuna.Study, lam: float, **system: Any) -> optuna.Trial:
    """A RUNNING trial as KneeSampler plans one (its λ and fidelity as system attributes)."""
    trial = study.ask()
    for key, value in {"knee:l1_weight": lam, FIDELITY_ATTR: "front", **system}.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    return trial


def test_a_trial_waits_for_the_running_parent_it_was_planned_on(caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    parent = _running(study, 0.0)
    child = _running(study, 0.1, **{PARENT_ATTR: 0.0})
    out: dict[str, Any] = {}
    with caplog.at_level(logging.INFO, logger="motune.continuation"):
        waiter = threading.Thread(target=lambda: out.update(result=wait_for_parent(child)))
        waiter.start()
        deadline = time.monotonic() + 120  # only against a hang: the loop waits for the state below
        while not any("waits for trial" in r.getMessage() for r in caplog.records):
            assert waiter.is_alive(), "returned without waiting for the running parent"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        study.tell(parent, [1.0, 2.0])
        waiter.join(120)
    done, weight = out["result"]
    assert weight == 0.0 and [t.number for t in done] == [parent.number]


def test_a_parent_whose_heartbeat_stopped_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    _running(study, 0.0, **{HEARTBEAT_ATTR: 123.0})  # a worker that died: the beat never changes
    child = _running(study, 0.1, **{PARENT_ATTR: 0.0})
    with caplog.at_level(logging.WARNING, logger="motune.continuation"):
        done, weight = wait_for_parent(child, grace=0.0)
    assert weight == 0.0 and done == []
    assert any("sent no heartbeat" in r.getMessage() for r in caplog.records)


def test_a_trial_planned_without_a_parent_weight_does_not_wait() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    _running(study, 0.0)
    assert wait_for_parent(_running(study, 0.1)) == ([], UNPLANNED)
    assert wait_for_parent(_running(study, 0.2, **{PARENT_ATTR: None})) == ([], None)
