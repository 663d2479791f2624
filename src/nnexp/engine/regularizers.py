"""Weight penalties (book ch. 3). Only weights are regularised, never biases.

n is always the size of the *training* set, whatever set a cost is evaluated on.
- l2: C = C0 + lambda/(2n) sum w^2 (eq. 85); update w -> (1 - eta lambda/n) w - ... (eq. 93).
- l1: C = C0 + lambda/n sum |w| (eq. 95); update w -> w - (eta lambda/n) sgn(w) - ... (eq. 97),
  with sgn(0) = 0.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np


def _none_penalty(weights, lmbda, n):
    return 0.0


def _l2_penalty(weights, lmbda, n):
    return 0.5 * lmbda / n * sum(float(np.einsum("ij,ij->", w, w)) for w in weights)


def _l1_penalty(weights, lmbda, n):
    return lmbda / n * sum(float(np.abs(w).sum()) for w in weights)


def _none_grad(w, lmbda, n):
    return np.zeros_like(w)


def _l2_grad(w, lmbda, n):
    return (lmbda / n) * w


def _l1_grad(w, lmbda, n):
    return (lmbda / n) * np.sign(w)


@dataclass(frozen=True)
class Penalty:
    name: str
    value: Callable[[list, float, int], float]
    gradient: Callable[[np.ndarray, float, int], np.ndarray]


PENALTIES: dict[str, Penalty] = {
    "none": Penalty("none", _none_penalty, _none_grad),
    "l2": Penalty("l2", _l2_penalty, _l2_grad),
    "l1": Penalty("l1", _l1_penalty, _l1_grad),
}
