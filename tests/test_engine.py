"""Engine tests: backprop against finite differences, the SGD step against the book's
update equations computed independently, and the book's qualitative behaviours."""

import warnings

import numpy as np
import pytest

from nnexp.engine.activations import ACTIVATIONS
from nnexp.engine.costs import COSTS
from nnexp.engine.network import (Network, backward, evaluate, forward, init_network,
                                  load_network, predict, save_network)
from nnexp.engine.regularizers import PENALTIES
from nnexp.engine.stepper import Stepper


def one_hot(labels, k):
    y = np.zeros((len(labels), k))
    y[np.arange(len(labels)), labels] = 1.0
    return y


def total_cost(net, x, y, penalty, lmbda, n, masks=None):
    """Mean data cost over the batch plus the weight penalty (training-set size n)."""
    acts, zL = forward(net, x, masks)
    return COSTS[net.cost].fn(zL, acts[-1], y) / len(x) + PENALTIES[penalty].value(net.weights, lmbda, n)


def analytic_gradient(net, x, y, penalty, lmbda, n, masks=None):
    acts, zL = forward(net, x, masks)
    gw, gb = backward(net, acts, zL, y, masks)
    gw = [g / len(x) + PENALTIES[penalty].gradient(w, lmbda, n) for g, w in zip(gw, net.weights)]
    return gw, [g / len(x) for g in gb]


def numeric_gradient(net, fn, h=1e-6):
    out = []
    for p in net.weights + net.biases:
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = fn()
            p[i] = old - h
            down = fn()
            p[i] = old
            g[i] = (up - down) / (2 * h)
        out.append(g)
    return out


def tiny_problem(cost, hidden, seed=0):
    rng = np.random.default_rng(seed)
    net = init_network([4, 5, 3], rng, init="large", hidden=hidden, cost=cost)
    x = rng.random((6, 4))
    y = one_hot(rng.integers(0, 3, 6), 3)
    return net, x, y


@pytest.mark.parametrize("penalty", ["none", "l2", "l1"])
@pytest.mark.parametrize("hidden", sorted(ACTIVATIONS))
@pytest.mark.parametrize("cost", sorted(COSTS))
def test_backprop_matches_finite_differences(cost, hidden, penalty):
    net, x, y = tiny_problem(cost, hidden)
    lmbda, n = 0.7, 9
    gw, gb = analytic_gradient(net, x, y, penalty, lmbda, n)
    num = numeric_gradient(net, lambda: total_cost(net, x, y, penalty, lmbda, n))
    for a, b in zip(gw + gb, num):
        rel = np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12)
        assert rel < 1e-6, rel


def test_backprop_with_fixed_dropout_mask_matches_finite_differences():
    net, x, y = tiny_problem("cross_entropy", "sigmoid")
    masks = [(np.random.default_rng(3).random((6, 5)) < 0.5) / 0.5]
    gw, gb = analytic_gradient(net, x, y, "l2", 0.3, 9, masks)
    num = numeric_gradient(net, lambda: total_cost(net, x, y, "l2", 0.3, 9, masks))
    for a, b in zip(gw + gb, num):
        assert np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)) < 1e-6


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def hand_step_222(w1, b1, w2, b2, xs, ys, eta, lmbda, n, penalty):
    """Per-example backprop on a 2-2-2 sigmoid / cross-entropy network, written out with
    scalar loops, then the notes' eqs. (20)-(24): w -> (1 - eta lmbda/n) w - eta/m sum dC_x/dw
    (L2), w -> w - eta lmbda/n sgn(w) - eta/m sum dC_x/dw (L1), b -> b - eta/m sum dC_x/db."""
    gw1, gb1, gw2, gb2 = np.zeros((2, 2)), np.zeros(2), np.zeros((2, 2)), np.zeros(2)
    for x, y in zip(xs, ys):
        a1 = [sigmoid(sum(x[i] * w1[i, j] for i in range(2)) + b1[j]) for j in range(2)]
        a2 = [sigmoid(sum(a1[j] * w2[j, k] for j in range(2)) + b2[k]) for k in range(2)]
        d2 = [a2[k] - y[k] for k in range(2)]
        d1 = [sum(w2[j, k] * d2[k] for k in range(2)) * a1[j] * (1 - a1[j]) for j in range(2)]
        for j in range(2):
            for k in range(2):
                gw2[j, k] += a1[j] * d2[k]
                gw1[k, j] += x[k] * d1[j]
            gb2[j] += d2[j]
            gb1[j] += d1[j]
    m = len(xs)
    shrink = {"l2": lambda w: (1 - eta * lmbda / n) * w,
              "l1": lambda w: w - eta * lmbda / n * np.sign(w)}[penalty]
    return (shrink(w1) - eta / m * gw1, b1 - eta / m * gb1,
            shrink(w2) - eta / m * gw2, b2 - eta / m * gb2)


@pytest.mark.parametrize("penalty", ["l2", "l1"])
def test_one_sgd_step_on_a_2_2_2_network_follows_the_update_equations(penalty):
    w1 = np.array([[0.1, -0.4], [0.3, 0.0]])  # a zero weight: sgn(0) = 0 for L1
    b1 = np.array([0.2, -0.1])
    w2 = np.array([[0.5, -0.6], [-0.2, 0.7]])
    b2 = np.array([0.05, 0.15])
    xs = np.array([[1.0, 0.5], [0.2, 0.9], [0.0, 1.0]])
    ys = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    expected = hand_step_222(w1, b1, w2, b2, xs, ys, eta=0.5, lmbda=2.0, n=20, penalty=penalty)
    net = Network([w1.copy(), w2.copy()], [b1.copy(), b2.copy()], cost="cross_entropy")
    Stepper.of([net], eta=0.5, lmbda=2.0, n_train=20, penalty=penalty).step(xs, ys)
    got = (net.weights[0], net.biases[0], net.weights[1], net.biases[1])
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)
    if penalty == "l1":  # the zero weight moved by the gradient only
        assert net.weights[0][1, 1] == pytest.approx(expected[0][1, 1])


def test_momentum_steps_follow_velocity_equations():
    net, x, y = tiny_problem("cross_entropy", "sigmoid")
    ref = Network([w.copy() for w in net.weights], [b.copy() for b in net.biases])
    eta, mu, lmbda, n = 0.3, 0.8, 1.5, 40
    stepper = Stepper.of([net], eta=eta, lmbda=lmbda, n_train=n, penalty="l2", momentum=mu)
    vw = [np.zeros_like(w) for w in ref.weights]
    vb = [np.zeros_like(b) for b in ref.biases]
    for _ in range(3):
        stepper.step(x, y)
        gw, gb = analytic_gradient(ref, x, y, "l2", lmbda, n)
        for i in range(2):  # eq. (107)-(108): v -> mu v - eta grad C; w -> w + v
            vw[i] = mu * vw[i] - eta * gw[i]
            vb[i] = mu * vb[i] - eta * gb[i]
            ref.weights[i] += vw[i]
            ref.biases[i] += vb[i]
    for a, b in zip(net.weights + net.biases, ref.weights + ref.biases):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("hidden", sorted(ACTIVATIONS))
@pytest.mark.parametrize("cost", sorted(COSTS))
@pytest.mark.parametrize("penalty,momentum,dropout", [
    ("none", 0.0, False), ("l2", 0.0, True), ("l1", 0.5, True), ("l1", 0.0, False)])
def test_fused_step_equals_gradient_descent_on_backprop(cost, hidden, penalty, momentum, dropout):
    """The fast in-place step = plain w - eta * gradient, for every combination."""
    net, x, y = tiny_problem(cost, hidden, seed=1)
    ref = Network([w.copy() for w in net.weights], [b.copy() for b in net.biases], hidden, cost)
    masks = [(np.random.default_rng(5).random((6, 5)) < 0.6) / 0.6] if dropout else None
    Stepper.of([net], eta=0.2, lmbda=0.9, n_train=30, penalty=penalty, momentum=momentum).step(x, y, masks)
    gw, gb = analytic_gradient(ref, x, y, penalty, 0.9, 30, masks)
    for p, g, new in zip(ref.weights + ref.biases, gw + gb, net.weights + net.biases):
        np.testing.assert_allclose(new, p - 0.2 * g, rtol=1e-11, atol=1e-14)


def single_neuron_costs(cost, epochs=150):
    """The book's learning-slowdown neuron: input 1 -> target 0, eta 0.15, w = b = 2."""
    net = Network([np.array([[2.0]])], [np.array([2.0])], cost=cost)
    x, y = np.array([[1.0]]), np.array([[0.0]])
    stepper = Stepper.of([net], eta=0.15, penalty="none")
    costs = []
    for _ in range(epochs + 1):
        acts, zL = forward(net, x)
        costs.append(COSTS[cost].fn(zL, acts[-1], y))
        stepper.step(x, y)
    return costs


def test_learning_slowdown_quadratic_vs_cross_entropy():
    quad = single_neuron_costs("quadratic")
    ce = single_neuron_costs("cross_entropy")
    assert quad[150] > 0.8 * quad[0]  # quadratic: still near its start (sigma' ~ 0)
    assert ce[150] < 0.5 * ce[0]  # cross-entropy: learns fast from the start
    assert ce[10] < 0.8 * ce[0] and quad[10] > 0.97 * quad[0]


def test_softmax_outputs_are_probabilities():
    net, x, _ = tiny_problem("log_likelihood", "sigmoid")
    net.weights[-1] *= 300  # large logits must not overflow
    out = predict(net, x)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)
    assert np.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("cost", sorted(COSTS))
def test_costs_stay_finite_for_saturated_outputs(cost):
    net, x, y = tiny_problem(cost, "sigmoid")
    for w in net.weights:
        w *= 1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, acc = evaluate(net, x, y.argmax(axis=1))
    assert np.isfinite(c) and 0 <= acc <= 1


def test_save_and_load_give_identical_outputs(tmp_path):
    net = init_network([6, 4, 3], np.random.default_rng(2), hidden="tanh", cost="log_likelihood")
    path = tmp_path / "net.npz"
    save_network(net, path)
    back = load_network(path)
    x = np.random.default_rng(3).random((5, 6))
    np.testing.assert_array_equal(predict(net, x), predict(back, x))
    assert back.hidden == "tanh" and back.cost == "log_likelihood" and back.sizes == [6, 4, 3]
    with np.load(path, allow_pickle=False) as f:  # loadable without pickle
        assert "w0" in f.files


@pytest.mark.parametrize("init,expected_std", [("scaled", 1 / np.sqrt(400)), ("large", 1.0)])
def test_initialisation_scales(init, expected_std):
    net = init_network([400, 300, 10], np.random.default_rng(0), init=init)
    assert net.weights[0].std() == pytest.approx(expected_std, rel=0.02)
    assert net.biases[0].std() == pytest.approx(1.0, rel=0.15)


def test_float32_network_stays_float32():
    net = init_network([5, 4, 3], np.random.default_rng(0), dtype=np.float32)
    x = np.random.default_rng(1).random((4, 5)).astype(np.float32)
    Stepper.of([net], eta=0.1, lmbda=1.0, n_train=10).step(x, one_hot([0, 1, 2, 0], 3).astype(np.float32))
    assert all(p.dtype == np.float32 for p in net.weights + net.biases)
