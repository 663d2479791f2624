"""Configuration: the typed schemas of a run (``run_schema``) and of a study (``study_schema``),
written once with their defaults and validation; a run's identity (``identity``); the names that
cross module boundaries (``names``) and the error types (``errors``)."""

from nnexp.config.run_schema import (GROUPS, RunConfig, field_names, flat_params, nested_fields, suggest,
                                     to_run_config, validate)
from nnexp.config.identity import config_hash, identity_hash, identity_params

__all__ = ["GROUPS", "RunConfig", "config_hash", "field_names", "flat_params", "identity_hash", "identity_params",
           "nested_fields", "suggest", "to_run_config", "validate"]
