"""Weight penalties (book ch. 3). Only weights are regularised, never biases.

n is always the size of the *training* set, whatever set a cost is evaluated on.
- l2: C = C0 + lambda/(2n) sum w^2 (eq. 85); update w -> (1 - eta lambda/n) w - ... (eq. 93).
- l1: C = C0 + lambda/n sum |w| (eq. 95); update w -> w - (eta lambda/n) sgn(w) - ... (eq. 97),
  with sgn(0) = 0.

Each penalty says how it enters an SGD step, with reg = eta lambda / n (per member,
shaped to broadcast over a (K, n_in, n_out) stack):
- ``decay(reg)``: the factor on w folded into the update gemm (L2's weight decay, eq. 93);
- ``shrink(w, reg)``: an in-place change of w before the gradient step (L1's eq. 97), or None;
- ``force(w, reg)``: eta times its gradient, for momentum's velocity (eq. 107), or None.
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


def _no_decay(reg):
    return 1.0


def _l2_decay(reg):
    return 1.0 - reg


def _l1_shrink(w, reg):
    w -= reg * np.sign(w)  # eq. (97), sgn(0) = 0


def _no_force(w, reg):
    return None


def _l2_force(w, reg):
    return reg * w


def _l1_force(w, reg):
    return reg * np.sign(w)


@dataclass(frozen=True)
class Penalty:
    name: str
    value: Callable[[list, float, int], float]
    gradient: Callable[[np.ndarray, float, int], np.ndarray]
    decay: Callable[[float], float] = _no_decay
    shrink: "Callable[[np.ndarray, np.ndarray], None] | None" = None
    force: Callable[[np.ndarray, np.ndarray], "np.ndarray | None"] = _no_force


PENALTIES: dict[str, Penalty] = {
    "none": Penalty("none", _none_penalty, _none_grad),
    "l2": Penalty("l2", _l2_penalty, _l2_grad, decay=_l2_decay, force=_l2_force),
    "l1": Penalty("l1", _l1_penalty, _l1_grad, shrink=_l1_shrink, force=_l1_force),
}
