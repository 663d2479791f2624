"""The book's figures regenerated from tracked runs: which runs each figure needs
(``figure_plan``), reading them back (``runs``), making the missing ones through the runner
(``launch``), every matplotlib figure (``figures``, the study's plots too) and the page
(``page``). The command line is :mod:`nnexp.cli.report`."""

from nnexp.report.launch import launch
from nnexp.report.page import Section, build_figure, write_page
from nnexp.report.figure_plan import FigureRun, load_figures, plan_jobs
from nnexp.report.runs import curves_frame, find_runs

__all__ = ["FigureRun", "Section", "build_figure", "curves_frame", "find_runs", "launch",
           "load_figures", "plan_jobs", "write_page"]
