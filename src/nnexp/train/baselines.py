"""Chapter 1's baselines and chapter 3's SVM comparison: random guessing, average darkness, and
scikit-learn's SVC, both as the book ran it and with today's default. Each is fitted on the
training split and returns a classifier ``x (n, 784) -> labels (n,)``; no I/O.

The book's SVM (``mnist_svm.py``, ``fig/more_data.py``) is ``svm.SVC()`` with the defaults of
scikit-learn at the time: an RBF kernel with gamma = 1 / n_features (``gamma="auto"``). Since
scikit-learn 0.22 the default is ``gamma="scale"`` = 1 / (n_features * x.var()), a different
model: on 100 MNIST images it scores ~66% where the book's scores ~25%, which reverses the
book's "more data" comparison at small sizes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Classifier = Callable[[np.ndarray], np.ndarray]


def random_guess(train, rng: np.random.Generator) -> Classifier:
    """Guess a digit uniformly at random (expected accuracy 1/10)."""
    return lambda x: rng.integers(0, 10, size=len(x))


def average_darkness(train, rng=None) -> Classifier:
    """The digit whose training images' average total darkness is closest (ch. 1)."""
    darkness = train.x.sum(axis=1)  # (n,)
    digits = np.unique(train.y)  # (k,)
    means = np.array([darkness[train.y == d].mean() for d in digits])  # (k,)
    return lambda x: digits[np.abs(x.sum(axis=1)[:, None] - means[None, :]).argmin(axis=1)]


def _svc(train, gamma: str) -> Classifier:
    from sklearn.svm import SVC

    model = SVC(gamma=gamma)
    model.fit(train.x, train.y)
    return model.predict


def svm_book(train, rng=None) -> Classifier:
    """SVC as the book ran it: RBF kernel, gamma = 1 / n_features (the default of its day)."""
    return _svc(train, "auto")


def svm(train, rng=None) -> Classifier:
    """SVC with today's scikit-learn defaults (gamma = 1 / (n_features * var(x)))."""
    return _svc(train, "scale")


BASELINES = {"random": random_guess, "darkness": average_darkness, "svm_book": svm_book, "svm": svm}
LABELS = {"random": "random guess", "darkness": "average darkness",
          "svm_book": "SVM as in the book (gamma = 1/784)", "svm": "SVM, today's scikit-learn default"}


def accuracy(classify: Classifier, split) -> float:
    return float(np.mean(classify(split.x) == split.y))
