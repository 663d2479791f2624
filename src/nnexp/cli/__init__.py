"""The command-line entry points: parse, call the layer below, print one summary line.
``run`` and ``study`` are Hydra apps, ``report``, ``sync`` and the benchmark argparse ones;
``callbacks`` holds the sweep's Hydra callback; ``entry`` what they share."""
