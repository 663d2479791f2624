"""Hyper-parameter search with Optuna (the only package that imports it): the backend (storage,
samplers, pruners), a stage's trials, the book's broad strategy and the sampler baselines, the
study's outputs, and the Python API (``run``: a study from overrides, like the command line)."""

from nnexp.config.study_schema import STAGES, StudySettings, to_settings
from nnexp.search.api import check_study_overrides, compose_study, load_settings, run, run_study
from nnexp.search.backend import DEFAULT_STORAGE, best_of, finished_trials, make_storage

__all__ = ["DEFAULT_STORAGE", "STAGES", "StudySettings", "best_of", "check_study_overrides", "compose_study",
           "finished_trials", "load_settings", "make_storage", "run", "run_study", "to_settings"]
