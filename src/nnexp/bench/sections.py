"""The benchmark's sections: one registry, name -> the function that measures it and a one-line
description (``--help`` lists them, ``--only NAME`` picks them)."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from nnexp.bench.calibration import calibration_section
from nnexp.bench.context import Bench
from nnexp.bench.population import population_section
from nnexp.bench.sgd import sgd_section
from nnexp.bench.study import study_section
from nnexp.bench.study_population import study_population_section
from nnexp.bench.sweep import sweep_section
from nnexp.bench.table import Table
from nnexp.bench.tracking import tracking_section


@dataclass(frozen=True)
class Section:
    """A section of the report: ``run`` measures and returns its table."""

    run: Callable[[Bench], Table]
    description: str


#: Every section, in the order the report prints them.
SECTIONS: Mapping[str, Section] = MappingProxyType({
    "sgd": Section(sgd_section, "engine vs hand-vectorised NumPy vs the book's per-example SGD, s/epoch"),
    "tracking": Section(tracking_section, "tracking overhead on the overfitting preset, tracked vs untracked"),
    "study": Section(study_section, "broad strategy vs TPE (median, Hyperband) vs random, equal wall clock"),
    "study-population": Section(study_population_section,
                                "broad strategy with trials one by one vs batched populations"),
    "population": Section(population_section, "K networks trained as one population, 1 and 2 processes"),
    "sweep": Section(sweep_section, "a tracked sweep end to end, basic vs population launcher"),
    "calibration": Section(calibration_section, "the broad strategy's decisions: null false-decision rate and "
                                                "power per stage kind, simulated"),
})
#: The sections run without --only.
DEFAULT_SECTIONS = ("sgd", "tracking", "population")
