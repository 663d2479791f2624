"""One mini-batch step of stochastic gradient descent for K >= 1 networks at once.

A single run is a population of one: the same code, the same arithmetic. Weights are stacked
on a leading axis, W[l] (K, n_in, n_out) with each member's matrix in Fortran order, biases
b[l] (K, n_out). Members share architecture, cost and penalty type; every scalar (eta,
lambda, momentum) is per member.

Plain SGD, per member, eq. (93) for L2 / (97) for L1, biases eq. (94):
    w -> (1 - eta lambda/n) w - (eta/m) sum_x dC_x/dw
    b -> b - (eta/m) sum_x dC_x/db
Momentum (eq. 107-108), the penalty's gradient included in the force:
    v -> mu v - eta (dC0/dw + dPenalty/dw);   w -> w + v

Why results cannot depend on K: every product that sums over examples or inputs is either a
stacked ``np.matmul`` (one 2-D product per member, bit-identical to a lone member's) or a
per-member BLAS gemm; everything else is element-wise. The weight update of each member is
one in-place gemm, W <- beta W + alpha a_in^T delta, which applies the weight decay (beta)
and the gradient (alpha = -eta/m) together without materialising the gradient.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import get_blas_funcs

from nnexp.engine.activations import ACTIVATIONS
from nnexp.engine.costs import COSTS
from nnexp.engine.network import Network, stack_networks
from nnexp.engine.regularizers import PENALTIES


def gemm_into(gemm, c: np.ndarray, alpha: float, a_in: np.ndarray, delta: np.ndarray, beta: float) -> None:
    """c (n_in, n_out) <- beta c + alpha a_in^T delta, in place, for a C- or F-ordered c;
    a_in (m, n_in) and delta (m, n_out) row-major, passed to BLAS without copies."""
    if c.flags.f_contiguous:
        gemm(alpha, a_in.T, delta.T, beta=beta, c=c, trans_b=1, overwrite_c=1)
    else:  # c^T is F-ordered: c^T <- beta c^T + alpha delta^T a_in
        gemm(alpha, delta.T, a_in.T, beta=beta, c=c.T, trans_b=1, overwrite_c=1)


def forward_keeping(weights, biases, act, cost, xb, masks):
    """The forward pass, keeping what backprop needs: each layer's input and each hidden
    layer's sigma(z) (for sigma'). xb (K, m, n_in), W (K, n_in, n_out), b as (K, 1, n_out)
    views; masks[l] (K, m, n_hidden_l) inverted-dropout multipliers or None."""
    inputs, hiddens = [xb], []
    a = xb
    last = len(weights) - 1
    for l in range(last + 1):
        z = np.matmul(a, weights[l])  # (K, m, n_out): one 2-D product per member
        z += biases[l]
        if l < last:
            h = act.fn(z)
            hiddens.append(h)
            a = h * masks[l] if masks is not None else h
            inputs.append(a)
        else:
            a = cost.output(z)
    return a, inputs, hiddens


class Stepper:
    """Applies SGD steps in place to K stacked members (K = 1: a single run).

    ``eta``, ``lmbda``, ``momentum``: one value per member. Change a member's learning rate
    with ``set_eta``; drop finished members with ``keep``.
    """

    def __init__(self, weights: list[np.ndarray], biases: list[np.ndarray], *, hidden: str, cost: str,
                 penalty: str, n_train: int, eta, lmbda=0.0, momentum=0.0):
        k = weights[0].shape[0]
        for w in weights:
            if w.ndim != 3 or w.shape[0] != k or not all(w[i].flags.f_contiguous for i in range(k)):
                raise ValueError("weights must be stacked (K, n_in, n_out), each member in Fortran order")
        self.weights, self.biases = weights, biases  # (K, n_in, n_out), (K, n_out)
        self.dtype = weights[0].dtype
        self.eta = np.broadcast_to(np.asarray(eta, dtype=np.float64), (k,)).copy()
        self.lmbda = np.broadcast_to(np.asarray(lmbda, dtype=np.float64), (k,)).copy()
        self.momentum = np.broadcast_to(np.asarray(momentum, dtype=np.float64), (k,)).copy()
        self.n_train = n_train
        self.act, self.cost, self.penalty = ACTIVATIONS[hidden], COSTS[cost], PENALTIES[penalty]
        self.gemm = get_blas_funcs("gemm", (weights[0],))
        self.bias_views = [b[:, None, :] for b in biases]  # (K, 1, n_out): broadcast over the batch
        self.members = [list(w) for w in weights]  # per layer, each member's (n_in, n_out) F-ordered view
        has_momentum = bool(self.momentum.any())  # momentum's velocities (eq. 107), if any member uses it
        self.vel_w = [np.zeros_like(w) for w in weights] if has_momentum else None
        self.vel_b = [np.zeros_like(b) for b in biases] if has_momentum else None
        self._scalars_for: int | None = None  # batch size the cached step scalars were made for

    @classmethod
    def of(cls, nets: list[Network], *, penalty: str = "l2", n_train: int = 1, eta=0.1, lmbda=0.0,
           momentum=0.0) -> "Stepper":
        """A stepper over these networks, which become views into its stacked parameters."""
        weights, biases = stack_networks(nets)
        return cls(weights, biases, hidden=nets[0].hidden, cost=nets[0].cost, penalty=penalty,
                   n_train=n_train, eta=eta, lmbda=lmbda, momentum=momentum)

    @property
    def size(self) -> int:
        return len(self.eta)

    def set_eta(self, row: int, value: float) -> None:
        self.eta[row] = value
        self._scalars_for = None

    def set_lmbda(self, row: int, value: float) -> None:
        self.lmbda[row] = value
        self._scalars_for = None

    def put(self, row: int, weights: list[np.ndarray], biases: list[np.ndarray], *, eta: float, lmbda: float,
            momentum: float) -> None:
        """A new member in ``row`` (a finished member's, refilled): its parameters, zero
        velocities and its scalars. Its steps from here on are those it would take alone."""
        for w, new in zip(self.weights, weights):
            w[row][...] = new
        for b, new in zip(self.biases, biases):
            b[row][...] = new
        if momentum and self.vel_w is None:
            self.vel_w = [np.zeros_like(w) for w in self.weights]
            self.vel_b = [np.zeros_like(b) for b in self.biases]
        if self.vel_w is not None:
            for v in self.vel_w + self.vel_b:
                v[row][...] = 0
        self.eta[row], self.lmbda[row], self.momentum[row] = eta, lmbda, momentum
        self._scalars_for = None

    def keep(self, rows: np.ndarray) -> None:
        """Keep only these rows (members) of every stacked array: finished members are dropped
        so they stop costing compute. Each kept member's matrices stay in Fortran order."""
        self.weights = [_take_rows(w, rows) for w in self.weights]
        self.biases = [b[rows] for b in self.biases]
        self.bias_views = [b[:, None, :] for b in self.biases]
        self.members = [list(w) for w in self.weights]
        self.eta, self.lmbda, self.momentum = self.eta[rows], self.lmbda[rows], self.momentum[rows]
        if self.vel_w is not None:
            self.vel_w = [_take_rows(v, rows) for v in self.vel_w]
            self.vel_b = [v[rows] for v in self.vel_b]
        self._scalars_for = None

    def _scalars(self, m: int) -> None:
        """Per-member step scalars for batch size m, recomputed only when eta, the members or
        the batch size change: alpha = -eta/m, reg = eta lambda/n, the decay beta."""
        if self._scalars_for == m:
            return
        reg = self.eta * self.lmbda / self.n_train  # (K,)
        self.alpha = [float(a) for a in -self.eta / m]  # gemm scalars
        self.alpha_b = (-self.eta / m).astype(self.dtype)[:, None]  # (K, 1)
        self.reg = reg.astype(self.dtype)[:, None, None]  # (K, 1, 1)
        self.decay = [float(self.penalty.decay(r)) for r in reg]
        self.mu = [float(u) for u in self.momentum]
        self.mu_b = self.momentum.astype(self.dtype)[:, None]  # (K, 1)
        self.segments = _runs(self.momentum > 0)
        self._scalars_for = m

    def step(self, xb: np.ndarray, yb: np.ndarray, masks: list[np.ndarray] | None = None) -> None:
        """One step on a mini-batch per member: xb (K, m, n_in), one-hot yb (K, m, n_out)
        ((m, n_in) and (m, n_out) for K = 1). ``masks[l]`` (K, m, n_hidden_l): inverted-dropout
        multipliers (0 or 1/(1-p)), or None."""
        if xb.ndim == 2:
            xb, yb = xb[None], yb[None]
            masks = None if masks is None else [mk[None] for mk in masks]
        self._scalars(xb.shape[1])
        a, inputs, hiddens = forward_keeping(self.weights, self.bias_views, self.act, self.cost, xb, masks)
        delta = self.cost.delta(None, a, yb)  # (K, m, n_L)  BP1 (z unused by every delta)
        for l in range(len(self.weights) - 1, -1, -1):
            back = np.matmul(delta, self.weights[l].swapaxes(-1, -2)) if l > 0 else None  # BP2, old W
            self._update(l, inputs[l], delta)
            if l > 0:
                back *= self.act.prime_from_output(hiddens[l - 1])  # sigma'(z), in place
                if masks is not None:
                    back *= masks[l - 1]
                delta = back

    def _update(self, l: int, a_in: np.ndarray, delta: np.ndarray) -> None:
        """BP3/BP4 and the update of layer l; a_in (K, m, n_in), delta (K, m, n_out)."""
        gb = np.add.reduce(delta, axis=1)  # (K, n_out)  BP3, summed over the batch
        gb *= self.alpha_b
        for rows, with_momentum in self.segments:
            if with_momentum:
                self._momentum_update(l, rows, a_in, delta, gb)
            else:
                self._plain_update(l, rows, a_in, delta, gb)

    def _plain_update(self, l: int, rows: range, a_in, delta, gb) -> None:
        """W <- decay W + alpha a_in^T delta (one in-place gemm per member), b <- b + gb."""
        w, gemm, alpha, decay, members = self.weights[l], self.gemm, self.alpha, self.decay, self.members[l]
        whole = len(rows) == len(w)
        if self.penalty.shrink is not None:  # a penalty that is not a decay (L1, eq. 97)
            self.penalty.shrink(w if whole else w[rows.start:rows.stop], self.reg[rows.start:rows.stop])
        for k in rows:  # the member's (n_in, n_out) matrix is F-ordered: BLAS updates it in place
            gemm(alpha[k], a_in[k].T, delta[k].T, beta=decay[k], c=members[k], trans_b=1, overwrite_c=1)
        if whole:
            self.biases[l] += gb
        else:
            self.biases[l][rows.start:rows.stop] += gb[rows.start:rows.stop]

    def _momentum_update(self, l: int, rows: range, a_in, delta, gb) -> None:
        """v <- mu v + alpha a_in^T delta - eta dPenalty/dw, w <- w + v (eq. 107-108)."""
        sl = slice(rows.start, rows.stop)
        w, b, v, vb = self.weights[l][sl], self.biases[l][sl], self.vel_w[l][sl], self.vel_b[l][sl]
        for k in rows:
            gemm_into(self.gemm, self.vel_w[l][k], self.alpha[k], a_in[k], delta[k], self.mu[k])
        force = self.penalty.force(w, self.reg[sl])  # eta dPenalty/dw, or None
        if force is not None:
            v -= force
        w += v
        vb *= self.mu_b[sl]
        vb += gb[sl]
        b += vb


def _runs(flags: np.ndarray) -> list[tuple[range, bool]]:
    """Contiguous runs of equal flags: [(rows, flag)]. Members with and without momentum take
    different update formulas; each run is updated with whole-stack operations."""
    out, start = [], 0
    for k in range(1, len(flags) + 1):
        if k == len(flags) or flags[k] != flags[start]:
            out.append((range(start, k), bool(flags[start])))
            start = k
    return out


def _take_rows(w: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """w[rows] for a (K, n_in, n_out) stack, each member's matrix in Fortran order."""
    return np.ascontiguousarray(w.transpose(0, 2, 1)[rows]).transpose(0, 2, 1)
