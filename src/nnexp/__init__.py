"""nnexp: hyper-parameter studies of the networks of Nielsen's *Neural Networks and Deep Learning*, ch. 1-3."""

__version__ = "0.1.0"
