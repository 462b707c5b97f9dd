"""Study configs: shipped files parse, defaults equal digits.toml, every bad input names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from motune.config import DATA_KEYS, PER_TRIAL_KEYS, ConfigError, StudyConfig, TrainSection
from motune.train import TrainConfig

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path: Path) -> None:
    cfg = StudyConfig.load(path)
    assert cfg.train.front_epochs <= cfg.train.epochs
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg


def test_builtin_default_is_digits_toml() -> None:
    assert StudyConfig.load(STUDIES / "digits.toml") == StudyConfig()


def test_paper_protocol_front_at_a_third_of_the_epochs() -> None:
    for name in ("fashion_mnist_lenet5", "mnist_lenet5", "cifar10_vgg"):
        cfg = StudyConfig.load(STUDIES / f"{name}.toml")
        assert cfg.train.model in ("lenet5", "vgg")
        assert cfg.train.front_epochs == round(cfg.train.epochs / 3)


def test_train_config_for_each_kind() -> None:
    cfg = StudyConfig()
    front = cfg.train_config("weighted_sum", l1_weight=1e-3, seed=5)
    full = cfg.train_config("weighted_sum", l1_weight=1e-3, full=True)
    smgd = cfg.train_config("smgd")
    assert (front.epochs, full.epochs, front.seed, front.l1_weight) == (10, 30, 5, 1e-3)
    assert smgd.method == "multi_gradient" and smgd.optimizer == "sgd" and smgd.epochs == 30
    tuned = StudyConfig.from_dict({"train": {"finetune_epochs": 5}})
    assert tuned.train_config(full=True).finetune_epochs == 5 and tuned.train_config().finetune_epochs == 0


def test_every_train_config_field_is_a_config_key_with_its_default() -> None:
    """Training settings are declared once: TrainConfig's fields are the [data] and [train] keys."""
    train_keys = {f.name for f in dataclasses.fields(TrainSection)}
    own = {f.name for f in dataclasses.fields(TrainConfig)} - set(PER_TRIAL_KEYS)
    assert train_keys | set(DATA_KEYS) == own | {"front_epochs"}
    section, config = StudyConfig().train, TrainConfig()
    for key in train_keys - {"epochs", "front_epochs", "finetune_epochs"}:  # the digits study trains 30 epochs, TrainConfig 10
        assert getattr(section, key) == getattr(config, key), key
    # finetune_epochs: TrainConfig's 0 (no fine-tune), a study's None (a third of epochs for the knee's retrain)
    assert section.finetune_epochs is None and config.finetune_epochs == 0 and StudyConfig().finetune_epochs == 10


def test_finetune_defaults_to_a_third_of_the_epochs_for_the_knee_retrain_only() -> None:
    config = StudyConfig.from_dict({"train": {"epochs": 15, "front_epochs": 5}, "study": {"baselines": ["smgd"]}})
    assert config.train_config(full=True).finetune_epochs == 5
    assert config.train_config().finetune_epochs == 0  # front trials never fine-tune
    assert config.train_config("smgd", full=True).finetune_epochs == 0  # baselines keep their protocol
    off = StudyConfig.from_dict({"train": {"finetune_epochs": 0}})
    assert off.train_config(full=True).finetune_epochs == 0


def test_every_train_key_reaches_the_trial() -> None:
    changed = {"penalise": "all", "optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "weight_decay": 1e-4,
               "lr_schedule": "cosine", "batch_size": 32, "prune_threshold": 1e-2, "prune_policy": "permanent",
               "device": "cpu", "eval_every_epoch": True, "finetune_epochs": 3, "epochs": 12, "front_epochs": 4}
    cfg = StudyConfig.from_dict({"train": changed, "data": {"limit": 100, "image_size": 16}})
    full, front = cfg.train_config(full=True), cfg.train_config()
    for key, value in changed.items():
        if key != "front_epochs":
            assert getattr(full, key) == value, key
    assert (front.epochs, front.finetune_epochs, full.limit, full.image_size) == (4, 0, 100, 16)


BAD = [
    ("[train]\nlrr = 0.1\n", "train.lrr: unknown key"),
    ("[study]\nn_trials = 'ten'\n", "study.n_trials: must be of type int"),
    ("[study]\nn_trials = 0\n", "study.n_trials"),
    ("[train]\nlr = -1.0\n", "train.lr: must be a number > 0"),
    ("[train]\nepochs = 5\nfront_epochs = 10\n", "train.front_epochs"),
    ("[train]\nprune_threshold = -0.1\n", "train.prune_threshold"),
    ("[train]\nfinetune_epochs = 30\n", "train.finetune_epochs"),
    ("[train]\noptimizer = 'lbfgs'\n", "train.optimizer: unknown value 'lbfgs'; allowed: sgd, adam, rmsprop"),
    ("[data]\ndataset = 'imagenet'\n", "data.dataset: unknown value 'imagenet'"),
    ("[study]\nknee = 'elbow'\n", "study.knee"),
    ("[study]\nseed = 18446744073709551616\n", "study.seed"),
    ("[study]\nseed = -1\n", "study.seed"),
    ("[study]\nstart_weights = [0.0, 2.0]\n", "study.start_weights"),
    ("[study]\nbaselines = ['newton']\n", "study.baselines: unknown kind 'newton'"),
    ("[baselines.smgd]\nlr = 0\n", "baselines.smgd.lr"),
    ("[baselines.bfgs]\nlr = 0.1\n", "baselines.bfgs: unknown key"),
    ("[extra]\nx = 1\n", "extra: unknown key"),
    ("[train]\nbatch_size = true\n", "train.batch_size: must be of type int"),
    ("[train]\neval_every_epoch = 1\n", "train.eval_every_epoch: must be of type bool"),
    ("[train]\nl1_weight = 0.1\n", "train.l1_weight: unknown key"),
    ("train = 3\n", "train: must be a table"),
    ("[train\nlr = 1\n", "not valid TOML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        StudyConfig.load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        StudyConfig.load(tmp_path / "nope.toml")


def test_import_paths_parse_without_importing_and_reach_the_train_config() -> None:
    """A config read from a storage is data: parsing it imports nothing, however it names code."""
    import sys

    raw = {
        "data": {"dataset": "never_imported_module:wine", "args": {"batch_size": 16}},
        "train": {"model": "never_imported_module:make", "model_args": {"hidden": 24},
                  "penalise": ["body.*.weight", "head.weight"]},
    }
    cfg = StudyConfig.from_dict(raw)
    assert "never_imported_module" not in sys.modules
    assert cfg.import_paths() == {"data.dataset": "never_imported_module:wine", "train.model": "never_imported_module:make"}
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["data"]["args"] == {"batch_size": 16}
    trial = cfg.train_config(l1_weight=1e-3)
    assert (trial.data_args, trial.model_args) == ({"batch_size": 16}, {"hidden": 24})
    assert trial.penalise == ["body.*.weight", "head.weight"]
    assert StudyConfig().import_paths() == {}


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"data": {"args": {"batch_size": 16}}}, r"data\.args: only an import-path dataset takes arguments"),
        ({"train": {"model_args": {"hidden": 4}}}, r"train\.model_args: only an import-path model takes arguments"),
        ({"train": {"penalise": 3}}, r"train\.penalise: must be str or list\[str\], got 3"),
        ({"train": {"penalise": []}}, r"train\.penalise: must be 'dense', 'all' or a non-empty list"),
        ({"train": {"model": "a:b:c"}}, r"train\.model: 'a:b:c' is not an import path"),
        ({"data": {"dataset": "m:f", "limit": 10}}, r"data\.limit: applies to built-in datasets only"),
        ({"data": {"args": [1]}}, r"data\.args: must be a table"),
    ],
)
def test_bad_import_path_settings_name_the_key(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        StudyConfig.from_dict(raw)


def test_the_device_is_local_a_study_resumes_on_another_device() -> None:
    import optuna

    from motune.storage import StudyError
    from motune.study import create_or_load_study

    storage = optuna.storages.InMemoryStorage()
    config = StudyConfig()
    create_or_load_study(config, storage)
    on_gpu = config.on_device("cuda:1")
    assert on_gpu != config and on_gpu.on_device(config.train.device) == config
    create_or_load_study(on_gpu, storage)  # same study: no "different config" error
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=0.5))
    with pytest.raises(StudyError, match="different config"):
        create_or_load_study(other.on_device("cuda:1"), storage)
