"""``python -m nnexp.report``."""

from nnexp.report.cli import main

main()
