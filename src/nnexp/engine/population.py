"""A population: K networks of one architecture trained together as one batched computation.

Weights are stacked on a leading axis, W[l] (K, n_in, n_out), and every member takes its
mini-batch step in the same NumPy calls (np.matmul over the stack). Members share the
architecture, cost, mini-batch size and penalty type; they differ in every scalar: eta,
lambda, momentum (and, outside this class, seed, initial weights and data order).
A member that is no longer ``active`` (diverged, early-stopped, finished) is frozen: its
learning rate and momentum are masked to zero while the others go on.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import get_blas_funcs

from nnexp.engine.activations import ACTIVATIONS
from nnexp.engine.costs import COSTS
from nnexp.engine.sgd import backward_sweep, forward_keeping, gemm_into


class PopulationStepper:
    """One SGD step for all members at once; the same update as ``Stepper`` per member."""

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], *, hidden: str, cost: str,
                 eta, lmbda, momentum, n_train: int, penalty: str):
        self.weights, self.biases = weights, biases  # (K, n_in, n_out), (K, n_out)
        k = weights[0].shape[0]
        dtype = weights[0].dtype
        self.eta = np.asarray(eta, dtype=np.float64).reshape(k).copy()
        self.lmbda = np.asarray(lmbda, dtype=np.float64).reshape(k).copy()
        self.momentum = np.asarray(momentum, dtype=np.float64).reshape(k).copy()
        self.active = np.ones(k, dtype=bool)
        self.n_train, self.penalty, self.dtype = n_train, penalty, dtype
        self.act, self.cost = ACTIVATIONS[hidden], COSTS[cost]
        self.gemm = get_blas_funcs("gemm", (weights[0],))
        self.bias_views = [b[:, None, :] for b in biases]  # (K, 1, n_out): broadcast over the batch
        self.vel_w = [np.zeros_like(w) for w in weights] if self.momentum.any() else None
        self.vel_b = [np.zeros_like(b) for b in biases] if self.momentum.any() else None
        self._key: tuple | None = None

    def keep(self, rows: np.ndarray) -> None:
        """Keep only these rows (members) of every stacked array: frozen members are dropped so
        they stop costing compute. Each kept member's matrices stay in Fortran order."""
        self.weights = [_take_rows(w, rows) for w in self.weights]
        self.biases = [b[rows] for b in self.biases]
        self.bias_views = [b[:, None, :] for b in self.biases]
        self.eta, self.lmbda = self.eta[rows], self.lmbda[rows]
        self._key = None
        self.momentum, self.active = self.momentum[rows], self.active[rows]
        if self.vel_w is not None:
            self.vel_w = [_take_rows(v, rows) for v in self.vel_w]
            self.vel_b = [v[rows] for v in self.vel_b]

    def _scalars(self, m: int):
        """Per-member step scalars, recomputed only when eta, lambda, the active set or the
        batch size changed (schedules and freezing write into those arrays)."""
        key = (m, self.eta.tobytes(), self.lmbda.tobytes(), self.active.tobytes())
        if key != self._key:
            eta = np.where(self.active, self.eta, 0.0)
            alpha = (-eta / m).astype(self.dtype)[:, None, None]  # (K, 1, 1)
            reg = (eta * self.lmbda / self.n_train if self.penalty != "none" else np.zeros_like(eta))
            reg = reg.astype(self.dtype)[:, None, None]
            decay = [float(d) for d in 1.0 - reg[:, 0, 0]] if self.penalty == "l2" else [1.0] * len(eta)
            self._key, self._cached = key, (alpha, reg, decay)
        return self._cached

    def step(self, xb: np.ndarray, yb: np.ndarray, masks: list[np.ndarray] | None = None) -> None:
        """xb (K, m, n_in), one-hot yb (K, m, n_out); masks[l] (K, m, n_hidden_l) or None."""
        a, inputs, hiddens = forward_keeping(self.weights, self.bias_views, self.act, self.cost, xb, masks)
        delta = self.cost.delta(None, a, yb)  # (K, m, n_L)  BP1
        alpha, reg, decay = self._scalars(xb.shape[1])
        backward_sweep(self.weights, delta, inputs, hiddens, self.act, masks, self._update, alpha, reg, decay)

    def _update(self, l, a_in, delta, alpha, reg, decay) -> None:
        w, b = self.weights[l], self.biases[l]
        scaled = delta * alpha  # (K, m, n_out): -eta/m delta, per member
        gb = np.add.reduce(scaled, axis=1)  # (K, n_out)
        if self.vel_w is not None:
            grad = np.matmul(a_in.transpose(0, 2, 1), scaled)  # (K, n_in, n_out)
            mu = np.where(self.active, self.momentum, 0.0).astype(self.dtype)
            v, vb = self.vel_w[l], self.vel_b[l]
            v *= mu[:, None, None]
            v += grad
            if self.penalty == "l2":
                v -= reg * w
            elif self.penalty == "l1":
                v -= reg * np.sign(w)
            w += v
            vb *= mu[:, None]
            vb += gb
            b += vb
            return
        if self.penalty == "l1":
            w -= reg * np.sign(w)
        # per member, one in-place gemm: W <- decay W + a_in^T scaled (weight decay and
        # gradient together, as Stepper does; faster than a batched matmul plus two passes)
        gemm = self.gemm
        for k in range(len(w)):
            gemm_into(gemm, w[k], 1.0, a_in[k], scaled[k], decay[k])
        b += gb


def _take_rows(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """w[rows] for a (K, n_in, n_out) stack, each member's matrix in Fortran order."""
    return np.ascontiguousarray(w.transpose(0, 2, 1)[rows]).transpose(0, 2, 1)


class NonzeroColumns:
    """A set without its input columns that are zero in every row (MNIST's border pixels: 67
    of 784 in the training set, 117 in the validation set). Those columns add exact zeros to
    the first layer, so the evaluation gemm can skip them; kept only if it saves >= 5%."""

    def __init__(self, x: np.ndarray):
        cols = np.flatnonzero(np.any(x != 0, axis=0))
        self.source = x
        if len(cols) <= 0.95 * x.shape[1]:
            self.cols, self.x = cols, np.ascontiguousarray(x[:, cols])
        else:
            self.cols, self.x = None, x


def evaluate_population(weights: list[np.ndarray], biases: list[np.ndarray], members: np.ndarray, *,
                        hidden: str, cost: str, x: np.ndarray | NonzeroColumns, labels: np.ndarray,
                        chunk: int = 10_000):
    """Mean data cost and accuracy of the chosen members on one shared set, without dropout.

    The first layer of all members is one gemm, x (n, n_in) @ [W_1 ... W_K] (n_in, K*h), which
    BLAS runs far faster than K thin products; later layers are a batched matmul. Given a
    ``NonzeroColumns`` set, the gemm only reads the input columns that are not all zero.
    Returns (costs (k,), accuracies (k,)) for ``members`` in order.
    """
    act, c = ACTIVATIONS[hidden], COSTS[cost]
    k = len(members)
    w0 = weights[0][members]  # (k, n_in, h)
    if isinstance(x, NonzeroColumns):
        if x.cols is not None:
            w0 = w0[:, x.cols, :]
        x = x.x
    n_in, h = w0.shape[1], w0.shape[2]
    wide = np.ascontiguousarray(w0.transpose(1, 0, 2).reshape(n_in, k * h))  # (n_in, k*h)
    b0 = biases[0][members].reshape(k * h)
    rest = [(w[members], b[members]) for w, b in zip(weights[1:], biases[1:])]
    n_out = weights[-1].shape[2]
    totals, correct = np.zeros(k), np.zeros(k, dtype=np.int64)
    with np.errstate(all="ignore"):
        for i in range(0, len(x), chunk):
            xs, lab = x[i:i + chunk], labels[i:i + chunk]
            rows = len(xs)
            z = xs @ wide  # (rows, k*h)
            z += b0
            if rest:
                a = act.fn(z).reshape(rows, k, h).transpose(1, 0, 2)  # (k, rows, h) views, no copy
                for j, (w, b) in enumerate(rest):
                    z = np.matmul(a, w)  # (k, rows, n_next); BLAS reads the strided views directly
                    z += b[:, None, :]
                    if j < len(rest) - 1:
                        a = act.fn(z)
            else:
                z = np.ascontiguousarray(z.reshape(rows, k, h).transpose(1, 0, 2))
            out = c.output(z.copy())  # (k, rows, n_out)
            y = np.zeros((rows, n_out), dtype=z.dtype)
            y[np.arange(rows), lab] = 1.0
            for m in range(k):
                totals[m] += c.fn(z[m], out[m], y)
            correct += np.count_nonzero(out.argmax(axis=2) == lab, axis=1)
    n = max(len(x), 1)
    return totals / n, correct / n
