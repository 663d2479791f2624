"""Weight initialisation (book ch. 3, "Weight initialization").

Weights of a layer with n_in inputs: N(0, 1/n_in) ("scaled", the book's improved default)
or N(0, 1) ("large", chapter 1's). Biases are N(0, 1) in both.
"""

import numpy as np


def scaled(n_in: int, n_out: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)


def large(n_in: int, n_out: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n_in, n_out))


INITS = {"scaled": scaled, "large": large}
