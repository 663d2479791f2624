"""``python -m nnexp.bench``."""

from nnexp.bench import main

main()
