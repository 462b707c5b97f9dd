"""The "Your own network" example: scikit-learn's wine data as DataLoaders and a small MLP.

``wine.toml`` beside this file names these callables by import path
(``dataset = "winenets:wine"``, ``model = "winenets:make"``); motune makes the config's
folder importable, so nothing needs installing. A worker on another machine needs this
file importable there too (start it with the config file, or put the folder on
PYTHONPATH).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def wine(batch_size: int = 16, seed: int = 0) -> dict[str, DataLoader]:
    """178 wines, 13 features, 3 classes: 60/20/20 stratified splits, standardised with training statistics."""
    x, y = load_wine(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def tensors(features: np.ndarray, labels: np.ndarray) -> TensorDataset:
        standard = torch.tensor((features - mean) / std, dtype=torch.float32)
        return TensorDataset(standard, torch.tensor(labels, dtype=torch.int64))

    return {
        "train": DataLoader(tensors(x_train, y_train), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed)),
        "val": DataLoader(tensors(x_val, y_val), batch_size=256),
        "test": DataLoader(tensors(x_test, y_test), batch_size=256),
    }


class WineNet(nn.Module):
    """Two hidden ReLU layers (``body``) and a linear ``head``."""

    def __init__(self, n_features: int, num_classes: int, hidden: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make(input_shape: tuple[int, ...], num_classes: int, hidden: int = 24) -> WineNet:
    """The network for inputs of ``input_shape`` (motune reads it from the data) and ``num_classes``."""
    return WineNet(math.prod(input_shape), num_classes, hidden)
