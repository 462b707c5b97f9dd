"""motune: sparse, accurate neural networks by biobjective training.

Training is a biobjective problem, cross-entropy (accuracy) against the l1 norm of the
weights (complexity), with intra-training pruning; the search over trade-offs is an
Optuna multi-objective study (Reiners, Klamroth & Stiglmayr, arXiv 2008.13590).
See README.md for the whole path and docs/architecture.md for where each piece lives.
"""

from motune.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from motune.combine import GradientCombiner, MultiGradient, WeightedSum, min_norm_alpha
from motune.config import ConfigError, StudyConfig
from motune.dashboard import DashboardCallback
from motune.data import DATASETS, DataError, Dataset, Loaders, load_data, load_dataset
from motune.dblock import DatabaseLock
from motune.export import ExportError, export_pareto, pareto_rows
from motune.hook import SparseTraining
from motune.imports import ImportPathError
from motune.models import MODELS, build_model, penalised_parameters
from motune.objectives import evaluate, l1_norm, nonzeros_per_layer
from motune.optim import PerObjectiveAdam, PerObjectiveOptimizer, PerObjectiveRMSprop
from motune.pareto import hypervolume, knee_index, nondominated_mask, supported_points
from motune.plots import write_plots
from motune.pruning import IntraTrainingPruning, count_nonzero, prune_below_threshold_
from motune.sampler import KneeSampler
from motune.selection import SelectionError, select
from motune.storage import StudyError, open_storage, planning_lock_for
from motune.study import create_or_load_study, knee_trial, run_study
from motune.train import DivergenceError, EpochRecord, TrainConfig, TrainResult, train
from motune.trial_pruning import FrontPruner, TrialMonitor
from motune.trials import trial_history

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "MODELS",
    "CheckpointError",
    "ConfigError",
    "DashboardCallback",
    "DataError",
    "DatabaseLock",
    "Dataset",
    "DivergenceError",
    "EpochRecord",
    "ExportError",
    "FrontPruner",
    "GradientCombiner",
    "ImportPathError",
    "IntraTrainingPruning",
    "KneeSampler",
    "Loaders",
    "MultiGradient",
    "PerObjectiveAdam",
    "PerObjectiveOptimizer",
    "PerObjectiveRMSprop",
    "SelectionError",
    "SparseTraining",
    "StudyConfig",
    "StudyError",
    "TrainConfig",
    "TrainResult",
    "TrialMonitor",
    "WeightedSum",
    "build_model",
    "count_nonzero",
    "create_or_load_study",
    "evaluate",
    "export_pareto",
    "hypervolume",
    "knee_index",
    "knee_trial",
    "l1_norm",
    "load_checkpoint",
    "load_data",
    "load_dataset",
    "load_model",
    "min_norm_alpha",
    "nondominated_mask",
    "nonzeros_per_layer",
    "open_storage",
    "pareto_rows",
    "penalised_parameters",
    "planning_lock_for",
    "prune_below_threshold_",
    "run_study",
    "save_checkpoint",
    "select",
    "supported_points",
    "train",
    "trial_history",
    "write_plots",
]
