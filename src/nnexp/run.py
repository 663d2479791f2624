"""``python -m nnexp.run``: the command lives in :mod:`nnexp.cli.run`."""

from nnexp.cli.run import main

if __name__ == "__main__":
    # the importable module's main, not a __main__ copy: worker processes (spawn, joblib) unpickle
    # the functions they are handed by reference
    main()
