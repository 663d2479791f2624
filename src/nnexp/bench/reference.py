"""Two networks written independently of :mod:`nnexp.engine`, for the tests and the benchmark.

* :class:`ReferenceNetwork`: the book's per-example algorithm (network2-style): column vectors,
  backprop one example at a time, gradients summed over the mini-batch, then
  ``w <- (1 - eta lambda/n) w - (eta/m) nabla_w`` (eq. 93 with L2 weight decay, eq. 87).
* :class:`HandVectorisedNetwork`: the best a hand-written NumPy loop does: one row per example,
  mini-batches gathered with ``x[idx]``, one in-place gemm per layer applying weight decay and
  gradient together.

Both are sigmoid networks with the cross-entropy cost (output error ``a^L - y``, eq. 66) and
L2 weight decay; both take the same update as ``nnexp.engine.Stepper`` (the tests check it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.linalg.blas import get_blas_funcs

from nnexp.engine.activations import sigmoid_  # the same in-place sigma as the engine's


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class ReferenceNetwork:
    """The book's per-example network: weights[l] (n_out, n_in), biases[l] (n_out, 1).

    Independent of :mod:`nnexp.engine`: sigmoid neurons, cross-entropy output error,
    L2 weight decay, one example (a column vector) at a time.
    """

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]):
        self.weights = [np.array(w, dtype=np.float64) for w in weights]
        self.biases = [np.array(b, dtype=np.float64).reshape(-1, 1) for b in biases]

    @classmethod
    def random(cls, sizes: Sequence[int], rng: np.random.Generator) -> "ReferenceNetwork":
        """Weights N(0, 1/n_in), biases N(0, 1): the book's default initialisation."""
        pairs = list(zip(sizes[:-1], sizes[1:]))
        weights = [rng.standard_normal((n_out, n_in)) / np.sqrt(n_in) for n_in, n_out in pairs]
        biases = [rng.standard_normal((n_out, 1)) for _, n_out in pairs]
        return cls(weights, biases)

    def backprop(self, x: np.ndarray, y: np.ndarray):
        """Gradients of one example's cost (BP1-BP4): x (n_in, 1), y (n_out, 1)."""
        outputs = [x]
        for w, b in zip(self.weights, self.biases):
            outputs.append(_sigmoid(w @ outputs[-1] + b))  # (n_out, 1)
        grads_w = [np.zeros_like(w) for w in self.weights]
        grads_b = [np.zeros_like(b) for b in self.biases]
        err = outputs[-1] - y  # cross-entropy: delta^L = a^L - y
        for l in range(len(self.weights) - 1, -1, -1):
            grads_b[l] = err
            grads_w[l] = err @ outputs[l].T  # (n_out, n_in)
            if l > 0:
                a = outputs[l]
                err = (self.weights[l].T @ err) * (a * (1.0 - a))
        return grads_w, grads_b

    def update_mini_batch(self, batch, eta: float, lmbda: float, n: int) -> None:
        """One SGD step on ``batch``, a list of (x, y) column-vector pairs."""
        sum_w = [np.zeros_like(w) for w in self.weights]
        sum_b = [np.zeros_like(b) for b in self.biases]
        for x, y in batch:
            grads_w, grads_b = self.backprop(x, y)
            sum_w = [s + g for s, g in zip(sum_w, grads_w)]
            sum_b = [s + g for s, g in zip(sum_b, grads_b)]
        m = len(batch)
        decay = 1.0 - eta * lmbda / n
        self.weights = [decay * w - (eta / m) * g for w, g in zip(self.weights, sum_w)]
        self.biases = [b - (eta / m) * g for b, g in zip(self.biases, sum_b)]


def column_pairs(x: np.ndarray, labels: np.ndarray, n_classes: int) -> list:
    """The book's data layout: a list of (x (n_in, 1), one-hot y (n_classes, 1)) pairs."""
    pairs = []
    for row, label in zip(np.asarray(x, dtype=np.float64), labels):
        y = np.zeros((n_classes, 1))
        y[int(label)] = 1.0
        pairs.append((row.reshape(-1, 1), y))
    return pairs


class HandVectorisedNetwork:
    """A plain hand-vectorised NumPy network: weights[l] (n_in, n_out) in Fortran order (updated
    in place by gemm), biases[l] (n_out,), all of one float type."""

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], dtype=np.float64):
        self.weights = [np.array(w, dtype=dtype, order="F") for w in weights]
        self.biases = [np.array(b, dtype=dtype).reshape(-1) for b in biases]

    @classmethod
    def random(cls, sizes: Sequence[int], rng: np.random.Generator, dtype=np.float64) -> "HandVectorisedNetwork":
        """Weights N(0, 1/n_in), biases N(0, 1)."""
        weights = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in zip(sizes, sizes[1:])]
        biases = [rng.standard_normal(b) for b in sizes[1:]]
        return cls(weights, biases, dtype)

    def train_epoch(self, x: np.ndarray, y: np.ndarray, perm: np.ndarray, mini_batch: int,
                    eta: float, lmbda: float) -> None:
        """One epoch of mini-batch SGD over the examples in the order ``perm``: x (n, n_in) and
        one-hot y (n, n_out) of the network's float type, n = the training-set size."""
        ws, bs = self.weights, self.biases
        gemm = get_blas_funcs("gemm", (ws[0],))
        n, decay = len(x), 1.0 - eta * lmbda / len(x)
        for k in range(0, n, mini_batch):
            idx = perm[k:k + mini_batch]
            xb, yb = x[idx], y[idx]  # (m, n_in), (m, n_out)
            acts = [xb]
            for w, b in zip(ws, bs):
                z = acts[-1] @ w  # (m, n_out)
                z += b
                acts.append(sigmoid_(z))
            delta = acts[-1] - yb  # (m, n_out) cross-entropy (eq. 66)
            alpha = -eta / len(idx)
            for l in range(len(ws) - 1, -1, -1):
                back = delta @ ws[l].T if l else None  # (m, n_in)
                gb = delta.sum(axis=0)
                # w <- decay w + alpha a^T delta, in place
                gemm(alpha, acts[l].T, delta.T, beta=decay, c=ws[l], trans_b=1, overwrite_c=1)
                gb *= alpha
                bs[l] += gb
                if l:
                    a = acts[l]
                    back *= a - a * a  # sigma'(z)
                    delta = back
