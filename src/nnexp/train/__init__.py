"""Training: what a run is asked to do (spec) and the one loop for K >= 1 members (loop)."""

from nnexp.config.names import COMPLETED, DIVERGED, EARLY_STOPPED, METRIC_NAMES, PRUNED, SPLIT_NAMES
from nnexp.train.loop import Population, evaluation_form, fit, fit_population, one_hot
from nnexp.train.spec import (Constant, EarlyStopping, HalveOnPlateau, History, Monitor, Observer, Piecewise,
                              Record, Streams, TrainSpec, population_key)

__all__ = ["COMPLETED", "DIVERGED", "EARLY_STOPPED", "METRIC_NAMES", "PRUNED", "SPLIT_NAMES", "Constant",
           "EarlyStopping", "evaluation_form", "HalveOnPlateau", "History", "Monitor", "Observer", "Piecewise", "Population", "Record", "Streams", "TrainSpec",
           "fit", "fit_population", "one_hot", "population_key"]
