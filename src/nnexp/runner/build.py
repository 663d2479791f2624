"""From a run configuration to the objects that train it: data splits, the TrainSpec, the
initial network. Pure functions of the config (and the files read)."""

from __future__ import annotations

import functools
import os

import numpy as np

from nnexp import data as datasets
from nnexp.config.run_schema import RunConfig, check_mini_batch
from nnexp.engine import init_network
from nnexp.train import Constant, EarlyStopping, HalveOnPlateau, Monitor, Piecewise, Streams, TrainSpec


@functools.lru_cache(maxsize=2)
def _load_cached(name: str, data_dir: str | None, dtype: str, download: bool, progress: bool,
                 env_dir: str | None):
    """Datasets are read once per process (a study's trials reuse them); never mutated."""
    return datasets.load(name, data_dir, dtype=np.dtype(dtype), download=download, progress=progress)


def load_splits(c: RunConfig, progress: bool = False):
    """The dataset with the config's subsets applied (first n, classes, expansion)."""
    splits = _load_cached(c.dataset.name, c.dataset.data_dir, c.dtype, c.dataset.download, progress,
                          os.environ.get("NNEXP_DATA_DIR"))
    train, val, test = splits.train, splits.validation, splits.test
    if c.dataset.classes:
        keep = list(c.dataset.classes)
        train, val, test = (datasets.only_classes(s, keep) for s in (train, val, test))
    if c.dataset.train_size is not None:
        train = datasets.first_n(train, c.dataset.train_size)
    if c.dataset.expanded:
        train = datasets.expand(train)
    check_mini_batch(c.mini_batch_size, len(train))  # a classes subset may be smaller than the catalog's size
    return splits, train, val, test


def train_spec(c: RunConfig) -> TrainSpec:
    schedule = Constant()
    if c.schedule.name == "halve_on_plateau":
        schedule = HalveOnPlateau(c.schedule.patience, c.schedule.min_factor)
    elif c.schedule.name == "piecewise":
        schedule = Piecewise(tuple((int(i), float(eta), float(lmbda)) for i, eta, lmbda in c.schedule.points))
    stopping = (EarlyStopping(c.early_stopping.patience, c.early_stopping.restore_best)
                if c.early_stopping.name != "off" else None)
    monitor = Monitor(tuple(c.monitor.metrics), c.monitor.every_images, c.monitor.validation_sample)
    return TrainSpec(epochs=c.total_epochs, mini_batch_size=c.mini_batch_size, eta=c.eta,
                     lmbda=c.lmbda, penalty=c.regularization.penalty,
                     dropout=c.regularization.dropout, momentum=c.momentum, schedule=schedule,
                     early_stopping=stopping, monitor=monitor)


def build_network(c: RunConfig, streams: Streams):
    dtype = np.float32 if c.dtype == "float32" else np.float64
    return init_network(c.sizes, streams.init, init=c.init.name, hidden=c.hidden, cost=c.cost.name, dtype=dtype)


