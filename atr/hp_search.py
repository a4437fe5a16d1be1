"""`train.py --hp_search N`: the paper's per-dataset choice of λ_cos, λ_L1, λ_con (and the learning rate), with optuna.

It runs through `Trainer.hyperparameter_search` (optuna backend): each trial builds a fresh model whose loss weights
come from the trial, trains it as `train.py` would, and is scored on the validation split (never test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .loss_atr import PAPER_WEIGHTS as LOSS_WEIGHTS

if TYPE_CHECKING:
    import optuna
    from transformers import PreTrainedModel, Trainer
    from transformers.trainer_utils import BestRun


def hp_space(trial: optuna.Trial) -> dict:
    """The searched settings: each loss weight in [0, 2] and the learning rate on a log scale around the recipe's."""
    space = {name: trial.suggest_float(name, 0.0, 2.0) for name in LOSS_WEIGHTS}
    space["learning_rate"] = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    return space


def make_model_init(build_model: Callable[[dict[str, float]], PreTrainedModel]) -> Callable[[optuna.Trial | None], PreTrainedModel]:
    """A `Trainer(model_init=...)` that builds a fresh model with the trial's loss weights (`build_model(overrides)`)."""

    def model_init(trial=None):
        params = {} if trial is None else dict(getattr(trial, "params", trial))
        return build_model({name: params[name] for name in LOSS_WEIGHTS if name in params})

    return model_init


def objective(metrics: dict) -> float:
    """Validation mAP@10 averaged over both directions: what a trial is ranked by."""
    keys = ("eval_t2a_mAP10", "eval_a2t_mAP10")
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise ValueError(f"hyperparameter search needs {missing} from evaluation: give the run a validation split (--eval_split)")
    return (metrics[keys[0]] + metrics[keys[1]]) / 2


def run(trainer: Trainer, n_trials: int, seed: int = 0) -> BestRun:
    """Search `n_trials` trials (optuna TPE, seeded) and return transformers' `BestRun`."""
    import optuna

    if trainer.eval_dataset is None:
        raise ValueError("--hp_search scores trials on the validation split, but the run has none: set --eval_split")
    return trainer.hyperparameter_search(
        direction="maximize", backend="optuna", n_trials=n_trials, hp_space=hp_space, compute_objective=objective,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
