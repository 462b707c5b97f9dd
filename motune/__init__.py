"""motune: sparse, accurate neural networks by biobjective training.

Training is a biobjective problem, cross-entropy (accuracy) against the l1 norm of the
weights (complexity), with intra-training pruning; the search over trade-offs is an
Optuna multi-objective study. See DESIGN.md for the mathematics.
"""

from motune.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from motune.combine import GradientCombiner, MultiGradient, WeightedSum, min_norm_alpha
from motune.data import DATASETS, DataError, Dataset, load_dataset
from motune.models import MODELS, build_model, penalised_parameters
from motune.objectives import evaluate, l1_norm, nonzeros_per_layer
from motune.pruning import IntraTrainingPruning, count_nonzero, prune_below_threshold_
from motune.train import DivergenceError, EpochRecord, TrainConfig, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "MODELS",
    "CheckpointError",
    "DataError",
    "Dataset",
    "DivergenceError",
    "EpochRecord",
    "GradientCombiner",
    "IntraTrainingPruning",
    "MultiGradient",
    "TrainConfig",
    "TrainResult",
    "WeightedSum",
    "build_model",
    "count_nonzero",
    "evaluate",
    "l1_norm",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "min_norm_alpha",
    "nonzeros_per_layer",
    "penalised_parameters",
    "prune_below_threshold_",
    "save_checkpoint",
    "train",
]
