"""One mini-batch step of stochastic gradient descent: forward, backprop, update.

Plain SGD (mu = 0), eq. (93) for L2 / (97) for L1, biases eq. (94):
    w -> (1 - eta lambda/n) w - (eta/m) sum_x dC_x/dw
    b -> b - (eta/m) sum_x dC_x/db
Momentum (eq. 107-108), the penalty's gradient included in the force:
    v -> mu v - eta (dC0/dw + dPenalty/dw);   w -> w + v

Speed: the weight update of each layer is one in-place BLAS gemm,
W <- beta W + alpha a_in^T delta, which applies the weight decay (beta) and the
gradient (alpha = -eta/m) together without materialising the gradient.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg.blas import get_blas_funcs

from nnexp.engine.activations import ACTIVATIONS
from nnexp.engine.costs import COSTS
from nnexp.engine.network import Network


def gemm_into(gemm, c: np.ndarray, alpha: float, a_in: np.ndarray, delta: np.ndarray, beta: float) -> None:
    """c (n_in, n_out) <- beta c + alpha a_in^T delta, in place, for a C- or F-ordered c;
    a_in (m, n_in) and delta (m, n_out) row-major, passed to BLAS without copies."""
    if c.flags.f_contiguous:
        gemm(alpha, a_in.T, delta.T, beta=beta, c=c, trans_b=1, overwrite_c=1)
    else:  # c^T is F-ordered: c^T <- beta c^T + alpha delta^T a_in
        gemm(alpha, delta.T, a_in.T, beta=beta, c=c.T, trans_b=1, overwrite_c=1)


def forward_keeping(weights, biases, act, cost, xb, masks):
    """The forward pass, keeping what backprop needs: each layer's input and each hidden
    layer's sigma(z) (for sigma'). One network: xb (m, n_in), W (n_in, n_out), b (n_out,);
    a population: xb (K, m, n_in), W (K, n_in, n_out), b given as (K, 1, n_out) views."""
    inputs, hiddens = [xb], []
    a = xb
    last = len(weights) - 1
    for l in range(last + 1):
        z = np.matmul(a, weights[l])  # (..., m, n_out)
        z += biases[l]
        if l < last:
            h = act.fn(z)
            hiddens.append(h)
            a = h * masks[l] if masks is not None else h
            inputs.append(a)
        else:
            a = cost.output(z)
    return a, inputs, hiddens


def backward_sweep(weights, delta, inputs, hiddens, act, masks, update, *args) -> None:
    """BP2 from the output layer down; ``update(l, a_in, delta, *args)`` changes layer l's
    parameters after its delta has been propagated with the old weights."""
    for l in range(len(weights) - 1, -1, -1):
        back = np.matmul(delta, weights[l].swapaxes(-1, -2)) if l > 0 else None  # BP2, old W
        update(l, inputs[l], delta, *args)
        if l > 0:
            back *= act.prime_from_output(hiddens[l - 1])  # sigma'(z), in place
            if masks is not None:
                back *= masks[l - 1]
            delta = back


class Stepper:
    """Applies SGD steps to ``net`` in place. ``eta`` may be changed between steps."""

    def __init__(self, net: Network, *, eta: float, lmbda: float = 0.0, n_train: int = 1,
                 penalty: str = "l2", momentum: float = 0.0):
        for w in net.weights:
            if not (w.flags.f_contiguous or w.flags.c_contiguous):
                raise ValueError("network weights must be contiguous (C or Fortran order)")
        self.net = net
        self.eta, self.lmbda, self.n_train = eta, lmbda, n_train
        self.penalty, self.momentum = penalty, momentum
        self.act = ACTIVATIONS[net.hidden]
        self.cost = COSTS[net.cost]
        self.gemm = get_blas_funcs("gemm", (net.weights[0],))
        self.ones = np.ones(1, dtype=net.dtype)
        self.vel_w = [np.zeros_like(w) for w in net.weights] if momentum else None
        self.vel_b = [np.zeros_like(b) for b in net.biases] if momentum else None

    def step(self, xb: np.ndarray, yb: np.ndarray, masks: list[np.ndarray] | None = None) -> None:
        """One step on a mini-batch: xb (m, n_in), one-hot yb (m, n_out).

        ``masks[l]`` (m, n_hidden_l): inverted-dropout multipliers (0 or 1/(1-p)).
        """
        net, m = self.net, len(xb)
        if len(self.ones) != m:
            self.ones = np.ones(m, dtype=net.dtype)
        a, inputs, hiddens = forward_keeping(net.weights, net.biases, self.act, self.cost, xb, masks)
        delta = self.cost.delta(None, a, yb)  # (m, n_L)  BP1 (z unused by every delta)
        alpha = -self.eta / m
        backward_sweep(net.weights, delta, inputs, hiddens, self.act, masks, self._update, alpha)

    def _update(self, l: int, a_in: np.ndarray, delta: np.ndarray, alpha: float) -> None:
        net = self.net
        w, b = net.weights[l], net.biases[l]
        reg = self.eta * self.lmbda / self.n_train if self.penalty != "none" else 0.0
        gb = self.ones @ delta  # (n_out,)  BP3, summed over the batch
        gb *= alpha
        if self.momentum:
            v = self.vel_w[l]
            gemm_into(self.gemm, v, alpha, a_in, delta, self.momentum)  # v <- mu v + alpha a_in^T delta
            if reg:
                v -= reg * (w if self.penalty == "l2" else np.sign(w))
            w += v
            vb = self.vel_b[l]
            vb *= self.momentum
            vb += gb
            b += vb
            return
        beta = 1.0
        if reg and self.penalty == "l2":
            beta = 1.0 - reg  # weight decay (eq. 93)
        elif reg:
            w -= reg * np.sign(w)  # eq. (97), sgn(0) = 0
        gemm_into(self.gemm, w, alpha, a_in, delta, beta)
        b += gb
