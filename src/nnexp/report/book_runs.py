"""The book's runs that are not a network trained on a dataset: the single neuron of the learning
slowdown and the baseline classifiers. Each is a ``fit`` of a runner Job (``Job.fit``), so the
runner tracks it like any run."""

from __future__ import annotations

import numpy as np

from nnexp.config.names import COMPLETED
from nnexp.train import History, Monitor, Record, TrainSpec, fit


def fit_neuron(spec: dict, job, observers: list) -> tuple[History, dict]:
    """The book's single neuron (input 1, target 0), trained by the one training loop: training
    cost per epoch, from epoch 0.

    The loop's targets are one-hot labels, so the neuron is trained in its mirror image: target
    1 with w -> -w, b -> -b. Since 1 - sigma(z) = sigma(-z), its cost and gradients are the
    book's neuron's at every step (quadratic: (1 - a')^2/2 = a^2/2; cross-entropy:
    -ln a' = -ln(1 - a)), and the book's output is 1 - a'."""
    from nnexp.data import Split
    from nnexp.engine.network import Network, evaluate

    net = Network([np.array([[-float(spec["w"])]], order="F")], [np.array([-float(spec["b"])])], cost=spec["cost"])
    one = Split(x=np.array([[1.0]]), y=np.array([0]))  # input 1; label 0 of one output: target 1 (mirrored)
    start = Record(epoch=0, images_seen=0, eta=float(spec["eta"]), epoch_seconds=0.0,
                   training_cost=evaluate(net, one.x, one.y)[0])
    for observe in observers:
        observe(start, net)
    train = TrainSpec(epochs=int(spec["epochs"]), mini_batch_size=1, eta=float(spec["eta"]), penalty="none",
                      monitor=Monitor(metrics=("training_cost",)))
    history = fit(net, one, train, observers=observers)
    z = float(net.weights[0][0, 0] + net.biases[0][0])  # the mirrored neuron's weighted input
    return history, {"final_output": 1.0 - 1.0 / (1.0 + np.exp(-z))}  # the book's output, sigma(-z)


def fit_baseline(spec: dict, job, observers: list) -> tuple[History, dict]:
    """A baseline fitted on the (first ``train_size``) training images of the job's data, scored
    on the validation and the test split (the book's "more data" script scores validation,
    chapter 1 test)."""
    from nnexp import data
    from nnexp.runner import load_splits
    from nnexp.train.baselines import BASELINES, accuracy

    _, train, val, test = load_splits(job.config)
    if spec["train_size"]:
        train = data.first_n(train, int(spec["train_size"]))
    classify = BASELINES[spec["method"]](train, np.random.default_rng(job.config.seed))
    v, a = accuracy(classify, val), accuracy(classify, test)
    return History(outcome=COMPLETED), {"validation_accuracy": v, "test_accuracy": a, "best_test_accuracy": a}
