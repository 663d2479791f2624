"""Typed run configuration: schemas for the Hydra config groups and their validation.

Hydra composes ``conf/``; ``to_run_config`` merges the result into these dataclasses
(rejecting unknown keys and wrongly typed values) and ``validate`` checks ranges and
choices before any data is loaded. Every problem is a one-line ``ConfigError``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nnexp.data import CATALOG, DATASETS
from nnexp.engine import ACTIVATIONS, COSTS, INITS, PENALTIES
from nnexp.config.errors import ConfigError
from nnexp.config.names import METRIC_NAMES

SCHEDULES = ("constant", "halve_on_plateau")
EARLY_STOPPING = ("off", "no_improvement")
DTYPES = ("float64", "float32")
REGULARIZATIONS = ("none", "l2", "l1", "dropout")


def _register_resolvers() -> None:
    """Arithmetic for presets, e.g. lmbda: ${nnexp_mul:${dataset.train_size},1e-4}."""
    if not OmegaConf.has_resolver("nnexp_mul"):
        OmegaConf.register_new_resolver("nnexp_mul", lambda a, b: a * b)


_register_resolvers()


@dataclass
class DatasetConfig:
    name: str = "mnist"
    data_dir: str | None = None
    n_inputs: int = 784
    train_size: int | None = None
    classes: list[int] | None = None
    expanded: bool = False
    download: bool = True


@dataclass
class CostConfig:
    name: str = "cross_entropy"


@dataclass
class RegularizationConfig:
    name: str = "l2"
    penalty: str = "l2"
    dropout: float = 0.0


@dataclass
class InitConfig:
    name: str = "scaled"


@dataclass
class ScheduleConfig:
    name: str = "constant"
    patience: int = 10
    min_factor: float = 1 / 1024


@dataclass
class EarlyStoppingConfig:
    name: str = "off"
    patience: int = 10
    restore_best: bool = True


@dataclass
class MonitorConfig:
    metrics: list[str] = field(default_factory=lambda: list(METRIC_NAMES))
    every_images: int | None = None
    validation_sample: int | None = None
    progress: bool | None = None  # None: auto (on a terminal, sequential jobs)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "nnexp"
    log_model: bool = True


@dataclass
class RunConfig:
    eta: float = 0.5
    lmbda: float = 5.0
    mini_batch_size: int = 10
    epochs: int = 30
    budget_images: int | None = None
    seed: int = 0
    sizes: list[int] = field(default_factory=lambda: [784, 30, 10])
    hidden: str = "sigmoid"
    momentum: float = 0.0
    dtype: str = "float64"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def train_size(self) -> int:
        """Training-set size known before loading (classes subsets are checked after)."""
        n = CATALOG[self.dataset.name].n_train
        if self.dataset.train_size is not None:
            n = min(n, self.dataset.train_size)
        return n * 5 if self.dataset.expanded else n

    @property
    def total_epochs(self) -> int:
        if self.budget_images is None:
            return self.epochs
        return max(1, math.ceil(self.budget_images / self.train_size))


GROUPS = ("dataset", "cost", "regularization", "init", "schedule", "early_stopping", "tracking")


def field_names(cls=RunConfig) -> list[str]:
    return [f.name for f in fields(cls)]


def nested_fields(key: str) -> list[str] | None:
    """Valid dotted sub-keys of a top-level group key, or None if it has none."""
    for f in fields(RunConfig):
        if f.name == key and is_dataclass(f.default_factory if callable(f.default_factory) else None):
            return field_names(f.default_factory)
    return None


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _one_line(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """Merge a composed config into the typed schema; one-line ConfigError on failure."""
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=False)
    container = {k: v for k, v in container.items() if k != "hydra"}
    unknown = [k for k in container if k not in field_names()]
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}'{suggest(unknown[0], field_names())}; "
                          f"valid keys: {', '.join(field_names())}")
    for group, sub in container.items():
        valid = nested_fields(group)
        if valid is not None and isinstance(sub, dict):
            bad = [k for k in sub if k not in valid]
            if bad:
                raise ConfigError(f"unknown key '{group}.{bad[0]}'{suggest(bad[0], valid)}; "
                                  f"valid keys of {group}: {', '.join(valid)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(container))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" for '{key}'" if key else ""
        raise ConfigError(f"bad value{where}: {_one_line(exc)}") from None
    validate(obj)
    return obj


def _choice(value: str, choices, what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} '{value}'{suggest(str(value), choices)}; "
                          f"choose one of: {', '.join(choices)}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(c: RunConfig) -> None:
    """Range and choice checks that need no data."""
    _choice(c.dataset.name, DATASETS, "dataset")
    _choice(c.cost.name, sorted(COSTS), "cost")
    _choice(c.regularization.name, REGULARIZATIONS, "regularization")
    _choice(c.regularization.penalty, sorted(PENALTIES), "regularization.penalty")
    _choice(c.init.name, sorted(INITS), "init")
    _choice(c.schedule.name, SCHEDULES, "schedule")
    _choice(c.early_stopping.name, EARLY_STOPPING, "early_stopping")
    _choice(c.hidden, sorted(ACTIVATIONS), "hidden activation")
    _choice(c.dtype, DTYPES, "dtype")
    _check(math.isfinite(c.eta) and c.eta > 0, f"eta must be a positive number, got {c.eta}")
    _check(math.isfinite(c.lmbda) and c.lmbda >= 0, f"lmbda must be >= 0, got {c.lmbda}")
    _check(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum}")
    _check(0 <= c.regularization.dropout < 1,
           f"regularization.dropout must be in [0, 1), got {c.regularization.dropout}")
    _check(c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}")
    _check(c.budget_images is None or c.budget_images >= 1, "budget_images must be >= 1 or null")
    _check(c.dataset.train_size is None or c.dataset.train_size >= 1,
           f"dataset.train_size must be >= 1, got {c.dataset.train_size}")
    _check(c.mini_batch_size >= 1, f"mini_batch_size must be >= 1, got {c.mini_batch_size}")
    _check(c.mini_batch_size <= c.train_size,
           f"mini_batch_size {c.mini_batch_size} is larger than the training set ({c.train_size} images)")
    _check(len(c.sizes) >= 2 and all(s >= 1 for s in c.sizes),
           f"sizes must list at least two positive layer sizes, got {c.sizes}")
    n_in = CATALOG[c.dataset.name].n_inputs
    _check(c.sizes[0] == n_in, f"sizes[0] is {c.sizes[0]} but dataset {c.dataset.name} has "
                               f"{n_in} inputs: use sizes=[{n_in},{','.join(map(str, c.sizes[1:]))}]")
    _check(c.sizes[-1] == 10, f"sizes[-1] must be 10 (ten digit classes), got {c.sizes[-1]}")
    for m in c.monitor.metrics:
        _choice(m, METRIC_NAMES, "monitor metric")
    _check(c.monitor.every_images is None or c.monitor.every_images >= 1,
           "monitor.every_images must be >= 1 or null")
    _check(c.monitor.validation_sample is None or c.monitor.validation_sample >= 1,
           "monitor.validation_sample must be >= 1 or null")
    needs_val = c.early_stopping.name != "off" or c.schedule.name == "halve_on_plateau"
    _check(not needs_val or "validation_accuracy" in c.monitor.metrics,
           "early stopping and halve_on_plateau need validation_accuracy in monitor.metrics")
    for name in ("schedule", "early_stopping"):
        _check(getattr(c, name).patience >= 1, f"{name}.patience must be >= 1")


def flat_params(c: RunConfig) -> dict[str, Any]:
    """The resolved config as MLflow params: top-level values, each group's option name
    under the group's key, other group fields as ``group.field``. Tracking is left out."""
    out: dict[str, Any] = {}
    for f in fields(c):
        value = getattr(c, f.name)
        if f.name == "tracking":
            continue
        if is_dataclass(value):
            for sub in fields(value):
                v = getattr(value, sub.name)
                out[f.name if sub.name == "name" else f"{f.name}.{sub.name}"] = v
        else:
            out[f.name] = value
    out["epochs"] = c.total_epochs
    return out
