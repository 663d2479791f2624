"""The book's figures regenerated from tracked runs: which runs each figure needs (plan),
reading them back (runs), making the missing ones (launch), statistics over seeds (stats),
the figures and the page (page), and the command line (cli)."""

from nnexp.report.cli import main, run
from nnexp.report.launch import launch
from nnexp.report.page import Section, build_figure, write_page
from nnexp.report.plan import Job, compose_run, load_figures, plan_jobs
from nnexp.report.runs import curves_frame, find_runs
from nnexp.report.stats import band, paired_difference, per_seed

__all__ = ["Job", "Section", "band", "build_figure", "compose_run", "curves_frame", "find_runs", "launch",
           "load_figures", "main", "paired_difference", "per_seed", "plan_jobs", "run", "write_page"]
