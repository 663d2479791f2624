"""The book's cost functions, each with its value ``fn`` and output-layer error ``delta`` (BP1).

``fn`` returns the *sum* over the rows of a mini-batch; callers divide by the batch size.
Values are computed from the weighted input z in forms that stay finite for any z:
cross-entropy as softplus(z) - y z (eq. 57 rewritten), log-likelihood as
logsumexp(z) - z_y (eq. 80).
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from nnexp.engine.activations import sigmoid_


def softmax_(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (eq. 78), in place, shifted by the maximum for safety.
    Works on (m, n) and on a population's (K, m, n)."""
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _softplus(z: np.ndarray) -> np.ndarray:
    """ln(1 + e^z) = max(z, 0) + ln(1 + e^-|z|): finite for any z, and 2-4x faster than
    np.logaddexp, whose loop NumPy does not vectorise."""
    t = np.abs(z)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    t += np.maximum(z, 0)
    return t


def quadratic_fn(z, a, y):
    """C = 1/2 ||y - a||^2 per example (eq. 6)."""
    d = a - y
    return 0.5 * float(np.einsum("ij,ij->", d, d))


def quadratic_delta(z, a, y):
    """delta^L = (a - y) * sigma'(z) (eq. 30 / BP1)."""
    return (a - y) * (a * (1.0 - a))


def cross_entropy_fn(z, a, y):
    """C = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)] per example (eq. 63)."""
    return float(np.sum(_softplus(z)) - np.einsum("ij,ij->", y, z))


def cross_entropy_delta(z, a, y):
    """delta^L = a - y (eq. 66): no sigma'(z) factor, hence no learning slowdown."""
    return a - y


def log_likelihood_fn(z, a, y):
    """C = -ln a_y per example (eq. 80), with a the softmax output."""
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.sum(lse) - np.einsum("ij,ij->", y, z))


@dataclass(frozen=True)
class Cost:
    name: str
    output: Callable[[np.ndarray], np.ndarray]  # in place: z^L -> a^L
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    delta: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


COSTS: dict[str, Cost] = {
    "quadratic": Cost("quadratic", sigmoid_, quadratic_fn, quadratic_delta),
    "cross_entropy": Cost("cross_entropy", sigmoid_, cross_entropy_fn, cross_entropy_delta),
    # eq. 81-84: softmax output with log-likelihood cost has delta^L = a - y as well.
    "log_likelihood": Cost("log_likelihood", softmax_, log_likelihood_fn, cross_entropy_delta),
}
