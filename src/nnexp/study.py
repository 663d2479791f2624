"""``python -m nnexp.study``: the command lives in :mod:`nnexp.cli.study`."""

from nnexp.cli.study import main

if __name__ == "__main__":
    # the importable module's main, not a __main__ copy: worker processes (spawn, joblib) unpickle
    # the functions they are handed by reference
    main()
