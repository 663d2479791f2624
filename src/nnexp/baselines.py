"""Chapter 1's baselines: random guessing, average darkness, and an SVM (scikit-learn SVC
with its defaults). Each returns the test accuracy; no I/O."""

from __future__ import annotations

import numpy as np


def random_guess(train, test, rng: np.random.Generator) -> float:
    """Guess a digit uniformly at random (expected accuracy 1/10)."""
    guesses = rng.integers(0, 10, size=len(test.y))
    return float(np.mean(guesses == test.y))


def average_darkness(train, test, rng=None) -> float:
    """Classify by the digit whose training images' average total darkness is closest (ch. 1)."""
    darkness = train.x.sum(axis=1)  # (n,)
    digits = np.unique(train.y)
    means = np.array([darkness[train.y == d].mean() for d in digits])  # (k,)
    test_dark = test.x.sum(axis=1)[:, None]  # (m, 1)
    guesses = digits[np.abs(test_dark - means[None, :]).argmin(axis=1)]
    return float(np.mean(guesses == test.y))


def svm(train, test, rng=None) -> float:
    """scikit-learn's SVC with default settings (the book's comparison: 94.35% on 50,000)."""
    from sklearn.svm import SVC

    model = SVC()
    model.fit(train.x, train.y)
    return float(np.mean(model.predict(test.x) == test.y))


BASELINES = {"random": random_guess, "darkness": average_darkness, "svm": svm}
