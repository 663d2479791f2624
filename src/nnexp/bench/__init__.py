"""The benchmark: how fast nnexp trains, tracks, searches and sweeps, as a report of sections.

Each section is a module of its own (``sgd``, ``tracking``, ``study``, ``study_population``,
``population``, ``sweep``) with one function from the shared :class:`~nnexp.bench.context.Bench`
(the training data and the run's settings) to a :class:`~nnexp.bench.table.Table`.
:data:`~nnexp.bench.sections.SECTIONS` registers them by name with a one-line description;
``nnexp-bench --help`` lists them and ``--only NAME`` picks them. A new section is a module
and one registry entry.

The reference networks the benchmark times the engine against, and the tests check the engine
with, live in :mod:`nnexp.bench.reference`. What each section measures is in its module's
docstring (the SGD timings: :mod:`nnexp.bench.sgd`).
"""

from nnexp.bench.command import main
from nnexp.bench.sections import DEFAULT_SECTIONS, SECTIONS, Section

__all__ = ["DEFAULT_SECTIONS", "SECTIONS", "Section", "main"]
