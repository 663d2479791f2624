"""Configuration: the typed schemas of a run (``run_schema``) and of a study (``study_schema``),
written once with their defaults and validation; a run's identity (``identity``); the names that
cross module boundaries (``names``) and the error types (``errors``). Import from the module
that owns a name (``from nnexp.config.run_schema import RunConfig``): this package imports
nothing, so that the data layer can use its errors without loading the schema."""
