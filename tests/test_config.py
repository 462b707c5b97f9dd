"""Study configs: shipped files parse, defaults equal digits.toml, every bad input names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from motune.config import ConfigError, StudyConfig

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
