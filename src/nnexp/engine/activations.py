"""Hidden-neuron activations, each with its derivative written in terms of the output ``a``.

Writing sigma'(z) as a function of a = sigma(z) lets backprop (BP2) reuse the stored
activations instead of keeping every z.
All functions work in place on their argument and return it.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np


def sigmoid_(z: np.ndarray) -> np.ndarray:
    """sigma(z) = 1 / (1 + e^-z), computed as (1 + tanh(z/2)) / 2: never overflows."""
    z *= 0.5
    np.tanh(z, out=z)
    z *= 0.5
    z += 0.5
    return z


def sigmoid_prime_(a: np.ndarray) -> np.ndarray:
    """sigma'(z) = a (1 - a); overwrites ``a``."""
    np.subtract(a, a * a, out=a)
    return a


def tanh_(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def tanh_prime_(a: np.ndarray) -> np.ndarray:
    """tanh'(z) = 1 - a^2; overwrites ``a``."""
    np.multiply(a, a, out=a)
    np.subtract(1.0, a, out=a)
    return a


def relu_(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0, out=z)


def relu_prime_(a: np.ndarray) -> np.ndarray:
    """relu'(z) = 1 where z > 0 (equivalently a > 0), else 0; overwrites ``a``."""
    np.greater(a, 0.0, out=a, casting="unsafe")
    return a


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[np.ndarray], np.ndarray]  # in place: z -> a
    prime_from_output: Callable[[np.ndarray], np.ndarray]  # in place: a -> sigma'(z)


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", sigmoid_, sigmoid_prime_),
    "tanh": Activation("tanh", tanh_, tanh_prime_),
    "relu": Activation("relu", relu_, relu_prime_),
}
