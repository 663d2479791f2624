"""Hyper-parameter search with Optuna: the backend (storage, samplers, pruners), a stage's
trials, the book's broad strategy and the sampler baselines, and the study's outputs."""

from nnexp.search.backend import DEFAULT_STORAGE, best_of, finished_trials, make_storage
from nnexp.config.study_schema import STAGES, StudySettings, to_settings
from nnexp.search.api import load_settings, run_study

__all__ = ["DEFAULT_STORAGE", "STAGES", "StudySettings", "best_of", "finished_trials", "load_settings",
           "make_storage", "run_study", "to_settings"]
