"""The run configuration, written once: every key's type, default and meaning (these dataclasses),
its validation (``validate``, each cross-field rule in one function) and its registration with
Hydra's ConfigStore (``schema: run``) as the structured base of ``conf/config.yaml``, which only selects a group
option per book concept. A group option (``conf/<group>/<option>.yaml``) states only what it
changes; everything it leaves out comes from here.

``to_run_config`` merges a composed config into these dataclasses (rejecting unknown keys and
wrongly typed values); every problem is a one-line ``ConfigError``. Adding a per-run key: a field
here (and its check in ``validate``), the code that uses it, and the README.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import II, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nnexp.config.errors import ConfigError
from nnexp.config.names import METRIC_NAMES
from nnexp.data import CATALOG, DATASETS
from nnexp.engine import ACTIVATIONS, COSTS, INITS, PENALTIES

SCHEDULES = ("constant", "halve_on_plateau", "piecewise")
EARLY_STOPPING = ("off", "no_improvement")
DTYPES = ("float64", "float32")
REGULARIZATIONS = ("none", "l2", "l1", "dropout")
SCHEMA_GROUP = "schema"  # the ConfigStore group conf/config.yaml extends: schema=run (study.yaml: study)


@dataclass
class DatasetConfig:
    name: str = "mnist"  # mnist | fashion_mnist | digits (sklearn's 8x8, offline)
    data_dir: str | None = None  # a directory with the four IDX files; else $NNEXP_DATA_DIR, cache, download
    n_inputs: int = II("nnexp_inputs:${.name}")  # pixels per image, from the dataset catalog
    train_size: int | None = None  # first n training images only (the book's overfitting runs: 1000)
    classes: list[int] | None = None  # keep only these digits, e.g. [0, 1]
    expanded: bool = False  # the book's expanded data: + one-pixel shifts (250,000 images)
    download: bool = True  # fetch (with a checksum) when neither local nor cached


@dataclass
class CostConfig:
    name: str = "cross_entropy"  # quadratic (ch. 1) | cross_entropy | log_likelihood (softmax output)


@dataclass
class RegularizationConfig:
    name: str = "l2"  # none | l2 | l1 | dropout (strength: lmbda)
    penalty: str = "l2"  # the weight penalty: none | l2 (C0 + lmbda/2n sum w^2) | l1 (C0 + lmbda/n sum |w|)
    dropout: float = 0.0  # probability of dropping a hidden neuron while training


@dataclass
class InitConfig:
    name: str = "scaled"  # scaled: N(0, 1/n_in) weights | large: N(0, 1) (ch. 1)


@dataclass
class ScheduleConfig:
    name: str = "constant"  # constant | halve_on_plateau (eta / 2 when validation accuracy stalls) | piecewise
    patience: int = 10  # halve_on_plateau: evaluations without improvement before halving
    min_factor: float = 1 / 1024  # halve_on_plateau: stop when eta reaches eta0 x min_factor (the book's 1/1024)
    # piecewise: [images, eta, lmbda] rows, each from that many training images on (before the
    # first: the run's eta and lmbda); e.g. a population-based training member's schedule
    points: list[Any] = field(default_factory=list)  # (checked by check_piecewise: OmegaConf cannot merge ints into list[list[float]])


@dataclass
class EarlyStoppingConfig:
    name: str = "off"  # off | no_improvement (on validation accuracy)
    patience: int = 10  # evaluations without improvement before stopping
    restore_best: bool = True  # end with the parameters of the best evaluation


@dataclass
class MonitorConfig:
    metrics: list[str] = field(default_factory=lambda: list(METRIC_NAMES))  # evaluated and tracked
    every_images: int | None = None  # evaluate every k training images instead of every epoch
    validation_sample: int | None = None  # evaluate validation on m random images instead of all
    progress: bool | None = None  # per-epoch progress bar; None: auto (on a terminal, sequential jobs)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "nnexp"
    log_model: bool = True  # the final network as model.npz
    checkpoint: bool = True  # keep each run's latest state beside its record, at each evaluation
    resume: bool = True  # continue this configuration's unfinished run (false: start over)


@dataclass
class RunConfig:
    """One run: the book's chapter-3 network on MNIST unless a key or a group option says otherwise."""

    eta: float = 0.5  # learning rate
    lmbda: float = 5.0  # regularization strength (L1 / L2)
    mini_batch_size: int = 10
    epochs: int = 30  # maximum epochs (early stopping may end sooner)
    budget_images: int | None = None  # if set, epochs = budget_images / training-set size (more_data)
    seed: int = 0
    sizes: list[int] = field(default_factory=lambda: [II("dataset.n_inputs"), 30, 10])  # inputs, hidden..., 10
    hidden: str = "sigmoid"  # hidden neurons: sigmoid | tanh | relu
    momentum: float = 0.0  # friction coefficient mu; 0 = plain SGD
    dtype: str = "float64"  # float64 (book fidelity) | float32
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        """Built in Python (``RunConfig()``), not composed: the defaults' interpolations resolved here."""
        if isinstance(self.dataset.n_inputs, str):
            self.dataset.n_inputs = CATALOG[self.dataset.name].n_inputs
        self.sizes = [self.dataset.n_inputs if isinstance(n, str) else n for n in self.sizes]

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


def register_schema() -> None:
    """Make the schema and the resolvers known to Hydra and OmegaConf (idempotent): importing the
    config module ``nnexp.conf`` does it, so every way of composing sees them. ``nnexp_inputs``: a dataset's inputs, from the catalog;
    ``nnexp_mul``: arithmetic for presets, e.g. lmbda: ${nnexp_mul:${dataset.train_size},1e-4}."""
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    ConfigStore.instance().store(group=SCHEMA_GROUP, name="run", node=RunConfig, package="_global_")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("nnexp_mul"):
        OmegaConf.register_new_resolver("nnexp_mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("nnexp_inputs"):  # an unknown dataset is validate()'s one-line error
        OmegaConf.register_new_resolver("nnexp_inputs", lambda name: CATALOG[name].n_inputs if name in CATALOG else 0)


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
    register_resolvers()
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
    check_mini_batch(c.mini_batch_size, c.train_size)
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
    check_validation_monitored(c)
    for name in ("schedule", "early_stopping"):
        _check(getattr(c, name).patience >= 1, f"{name}.patience must be >= 1")
    check_piecewise(c.schedule)


def check_piecewise(s: ScheduleConfig) -> None:
    """A piecewise schedule's points: [images, eta, lmbda] rows at increasing image counts."""
    if s.name != "piecewise":
        _check(not s.points, f"schedule.points is for schedule=piecewise, not {s.name}")
        return
    _check(len(s.points) >= 1, "schedule=piecewise needs schedule.points: [[images, eta, lmbda], ...]")
    for row in s.points:
        numbers = isinstance(row, (list, tuple)) and len(row) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
        _check(numbers and row[0] >= 0 and row[0] == int(row[0]) and row[1] > 0 and row[2] >= 0,
               f"each schedule.points row is [images >= 0 (whole), eta > 0, lmbda >= 0], got {row}")
    images = [row[0] for row in s.points]
    _check(images == sorted(set(images)), f"schedule.points must be at increasing image counts, got {images}")


def check_mini_batch(mini_batch_size: int, n_train: int) -> None:
    """A mini-batch fits in the training set: checked before loading (the catalog's size) and
    after (the size of the subset actually read)."""
    _check(mini_batch_size >= 1, f"mini_batch_size must be >= 1, got {mini_batch_size}")
    _check(mini_batch_size <= n_train,
           f"mini_batch_size {mini_batch_size} is larger than the training set ({n_train} images)")


def needs_validation(c: RunConfig) -> bool:
    """Early stopping and halve_on_plateau decide on validation accuracy."""
    return c.early_stopping.name != "off" or c.schedule.name == "halve_on_plateau"


def check_validation_monitored(c: RunConfig) -> None:
    _check(not needs_validation(c) or "validation_accuracy" in c.monitor.metrics,
           "early stopping and halve_on_plateau need validation_accuracy in monitor.metrics")


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
