"""The ``study`` config group (sweeps/study/*.yaml) as a typed schema with its defaults, validated
like a run config: unknown keys and bad values are one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nnexp.config.run_schema import SCHEMA_GROUP, RunConfig, register_schema, suggest
from nnexp.config.errors import ConfigError

#: the stages of each kind of study, in order
STAGES = {"broad_strategy": ["eta_threshold", "lmbda_walk", "lmbda_refine", "mini_batch", "eta_refine", "final"],
          "sampler": ["search", "final"], "pbt": ["pbt", "final"],
          "asha": ["asha", "final"]}
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")


@dataclass
class Rung:
    """A problem a stage runs on. Stages start on the stripped-down problem (the book: 0s and 1s,
    no hidden layer, monitoring every 1,000 images on 100 validation images) and escalate up the
    ladder while their trials tie, building back up to the configured network."""

    name: str = "stripped"
    classes: list[int] | None = field(default_factory=lambda: [0, 1])  # None: the configured data
    hidden: list[int] | None = field(default_factory=list)  # None: the configured hidden layers
    every_images: int | None = 1000  # None: once an epoch
    validation_sample: int | None = 100  # None: the whole validation set
    epochs: int | None = 10  # the lambda stages' epochs on this rung; None: study.lmbda.epochs


def _ladder() -> list[Rung]:
    return [Rung("all_classes", None, [], None, 1000, 10), Rung("few_hidden", None, [10], None, None, 10),
            Rung("full", None, None, None, None, None)]


@dataclass
class EtaStage:
    decades: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
    refine: list[float] = field(default_factory=lambda: [2.0, 5.0])  # inside the threshold's decade
    epochs: int = 3  # "the first few epochs"
    refine_step: float = 2.0  # eta_refine (configured network, chosen mini-batch): eta / step, eta, eta x step
    refine_max_steps: int = 2  # ... beyond the edge at most this often
    refine_epochs: int = 10


@dataclass
class LmbdaStage:
    start: float = 1.0  # in full-data units
    max_steps: int = 3  # the walk in factors of 10 beyond the first three decades
    refine_step: float = 3.0  # lmbda_refine: lambda / step, lambda, lambda x step
    epochs: int = 30  # every value trains exactly this long (the same budget), unless its rung says


@dataclass
class MiniBatchStage:
    sizes: list[int] = field(default_factory=lambda: [1, 10, 20, 50, 100])
    base: int = 10  # eta was tuned at this size; a trial uses eta * size / base; ties keep it
    epochs: int = 2
    evaluations_per_epoch: int = 10
    validation_sample: int | None = None  # None: the whole validation set (curves not noise-dominated)


@dataclass
class FinalStage:
    epochs: int = 60


@dataclass
class PbtStage:
    """Population-based training (kind: pbt): members per population (one population per worker),
    how often they are ranked, and how the bottom exploits the top and explores."""

    members: int = 16
    ready_images: int | None = None  # None: every 5 epochs
    exploit_fraction: float = 0.25
    perturb: list[float] = field(default_factory=lambda: [0.8, 1.2])
    resample_probability: float = 0.25


@dataclass
class AshaStage:
    """Successive halving with refill (kind: asha): members per population (one per worker) and
    the rungs, min_epochs x reduction_factor^k epochs."""

    members: int = 8
    min_epochs: int = 1
    reduction_factor: int = 3


@dataclass
class StudySettings:
    name: str = "broad_strategy"
    kind: str = "broad_strategy"  # broad_strategy | sampler | pbt | asha
    question: str = ""
    study_name: str | None = None  # default: name; stages are <study_name>/<stage>
    storage: str | None = None  # Optuna storage URL; None = sqlite:///optuna.db
    workers: int | None = None  # worker processes per stage; None: the machine's cores
    population: int = 1  # trials asked at once per worker and trained as one population
    seed: int = 0
    pruner: str = "median"
    patience: int = 10
    scientific: list[str] = field(default_factory=lambda: ["eta", "lmbda", "mini_batch_size"])
    replicates: int = 3  # seeds per trial of a grid stage and of the final stage, trained as one population
    max_replicates: int = 6  # a grid stage's unresolved comparison trains its contenders up to this many seeds
    min_effect: float = 0.0  # the smallest accuracy difference a grid stage acts on (at least one validation example)
    stripped: Rung = field(default_factory=Rung)
    ladder: list[Rung] = field(default_factory=_ladder)
    eta: EtaStage = field(default_factory=EtaStage)
    lmbda: LmbdaStage = field(default_factory=LmbdaStage)
    mini_batch: MiniBatchStage = field(default_factory=MiniBatchStage)
    final: FinalStage = field(default_factory=FinalStage)
    # sampler studies (kind: sampler)
    sampler: str = "tpe"
    n_trials: int = 20
    budget_images: int | None = None
    budget_seconds: float | None = None  # wall clock of the search (the benchmark's equal budgets)
    epochs: int = 30
    space: dict[str, Any] = field(default_factory=dict)
    pbt: PbtStage = field(default_factory=PbtStage)
    asha: AshaStage = field(default_factory=AshaStage)
    stop_after: str | None = None
    output_dir: str | None = None
    heartbeat_seconds: int = 10
    grace_seconds: int = 30

    @property
    def study(self) -> str:
        return self.study_name or self.name


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def to_settings(raw: dict) -> StudySettings:
    """The ``study`` group as StudySettings; one-line ConfigError for unknown keys or bad values."""
    known = list(StudySettings.__dataclass_fields__)
    unknown = [k for k in raw if k not in known]
    if unknown:
        raise ConfigError(f"unknown key 'study.{unknown[0]}'{suggest(unknown[0], known)}; study keys: "
                          f"{', '.join(known)}")
    try:
        s = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudySettings), OmegaConf.create(raw)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"bad value{f' for study.{key}' if key else ''}: {_one_line(exc)}") from None
    validate(s)
    return s


def validate(s: StudySettings) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    check(s.kind in STAGES, f"unknown study kind '{s.kind}'; choose one of: {', '.join(STAGES)}")
    check(s.pruner in PRUNERS, f"unknown study.pruner '{s.pruner}'; choose one of: {', '.join(PRUNERS)}")
    check(s.sampler in SAMPLERS, f"unknown study.sampler '{s.sampler}'; choose one of: {', '.join(SAMPLERS)}")
    check(s.population >= 1, f"study.population must be a whole number >= 1 (trials trained together), "
                             f"got {s.population!r}")
    check(s.workers is None or s.workers >= 1, f"study.workers must be >= 1 (or null: the machine's cores), "
                                               f"got {s.workers}")
    check(s.stop_after is None or s.stop_after in STAGES[s.kind],
          f"unknown stage '{s.stop_after}' for study.stop_after; stages: {', '.join(STAGES[s.kind])}")
    check(s.kind != "sampler" or bool(s.space), "a sampler study needs study.space (eta, lmbda, mini_batch_size)")
    check(s.kind != "pbt" or {"eta", "lmbda"} <= set(s.space),
          "population-based training needs study.space.eta and study.space.lmbda ({low, high}: its ranges)")
    check(s.pbt.members >= 2, f"study.pbt.members must be >= 2 (a population to rank), got {s.pbt.members}")
    check(0 < s.pbt.exploit_fraction <= 0.5, f"study.pbt.exploit_fraction must be in (0, 0.5] (the bottom copies "
                                             f"the top), got {s.pbt.exploit_fraction}")
    check(0 <= s.pbt.resample_probability <= 1, f"study.pbt.resample_probability must be in [0, 1], got "
                                                 f"{s.pbt.resample_probability}")
    check(bool(s.pbt.perturb) and all(f > 0 for f in s.pbt.perturb),
          f"study.pbt.perturb must be factors > 0, got {s.pbt.perturb}")
    check(s.asha.members >= 2 and s.asha.min_epochs >= 1 and s.asha.reduction_factor >= 2,
          "study.asha: members >= 2, min_epochs >= 1 and reduction_factor >= 2 (whole numbers)")
    check(s.kind != "asha" or "mini_batch_size" not in s.space,
          "study=asha trains one population, whose members share the mini-batch size: remove "
          "study.space.mini_batch_size (mini_batch_size=... sets it)")
    check(s.pbt.ready_images is None or s.pbt.ready_images >= 1, "study.pbt.ready_images must be >= 1 (or null: every 5 epochs)")
    check(s.replicates >= 1, f"study.replicates must be a whole number >= 1 (seeds per trial), got {s.replicates!r}")
    check(s.kind != "broad_strategy" or s.replicates >= 2,
          f"study.replicates must be >= 2 for the broad strategy: its grid stages compare values over paired "
          f"seeds, and one seed gives no interval (got {s.replicates})")
    check(s.max_replicates >= s.replicates, f"study.max_replicates ({s.max_replicates}) must be >= study.replicates "
                                            f"({s.replicates})")
    check(0 <= s.min_effect < 1, f"study.min_effect is an accuracy difference in [0, 1), got {s.min_effect}")
    check(s.eta.refine_step > 1 and s.lmbda.refine_step > 1,
          "study.eta.refine_step and study.lmbda.refine_step must be > 1 (factors)")
    check(all(r.epochs is None or r.epochs >= 1 for r in [s.stripped, *s.ladder]),
          "study.stripped.epochs and each study.ladder rung's epochs must be >= 1 (or null: study.lmbda.epochs)")
    check(len({r.name for r in [s.stripped, *s.ladder]}) == len(s.ladder) + 1,
          "study.ladder: every rung needs its own name (it names the rung's Optuna study)")
    check(s.heartbeat_seconds >= 1 and s.grace_seconds >= 1, "study.heartbeat_seconds and grace_seconds must be >= 1")


@dataclass
class StudyRunConfig(RunConfig):
    """``python -m nnexp.study``'s composed config: the run config every trial starts from, and the
    ``study`` group (checked by ``to_settings``, which gives one-line errors)."""

    study: dict[str, Any] = field(default_factory=dict)


def register_study_schema() -> None:
    """The run schema and the study's, known to Hydra (idempotent)."""
    from hydra.core.config_store import ConfigStore

    register_schema()
    ConfigStore.instance().store(group=SCHEMA_GROUP, name="study", node=StudyRunConfig, package="_global_")  # conf/study.yaml
