"""``python -m nnexp.report``."""

from nnexp.cli.report import main

main()
