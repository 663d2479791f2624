"""Datasets for the experiments: MNIST, Fashion-MNIST (IDX files) and sklearn's 8x8 digits.

Every dataset is returned as :class:`Splits` with the book's split (training = first 50,000
training images, validation = last 10,000, test = t10k), pixels scaled to [0, 1] and labels as
int64 class indices. One module per concern:

- ``catalog``: names and sizes, file names, official checksums, mirrors, system directories;
- ``splits``: the containers (``Split``, ``Splits``, ``DataFile``);
- ``idx``: the IDX file parser;
- ``download``: hash-checked, atomic downloads through pooch, mirror after mirror;
- ``locate``: where files are looked for (see there), and their checksum verification;
- ``loaders``: ``load()``, the book's split, sklearn's digits;
- ``subsets``: first n, some classes, a sample, the expanded data.
"""

from nnexp.data.catalog import CATALOG, CHECKSUMS, DATASETS, IDX_FILES, DatasetFacts
from nnexp.data.splits import DataFile, Split, Splits
from nnexp.data.idx import read_idx
from nnexp.data.download import download_file, fetch
from nnexp.data.locate import cache_dir
from nnexp.data.loaders import load
from nnexp.data.subsets import expand, first_n, only_classes, sample

__all__ = [
    "CATALOG",
    "CHECKSUMS",
    "DATASETS",
    "DatasetFacts",
    "DataFile",
    "IDX_FILES",
    "Split",
    "Splits",
    "cache_dir",
    "download_file",
    "expand",
    "fetch",
    "first_n",
    "load",
    "only_classes",
    "read_idx",
    "sample",
]
