"""The dataset catalog: names and sizes, the IDX file names, the official checksums, the download
mirrors and the system directories. Facts only, read at call time by the other modules (so a
test may replace ``MIRRORS`` or ``SYSTEM_DIRS`` here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from nnexp.config.errors import DataError


@dataclass(frozen=True)
class DatasetFacts:
    """What is known of a dataset before reading it: the one place these numbers live."""

    name: str
    title: str
    n_inputs: int  # pixels per image
    n_train: int  # training images in the book's split
    n_validation: int
    n_classes: int = 10


CATALOG = MappingProxyType({
    "mnist": DatasetFacts("mnist", "MNIST", 784, 50_000, 10_000),
    "fashion_mnist": DatasetFacts("fashion_mnist", "Fashion-MNIST", 784, 50_000, 10_000),
    "digits": DatasetFacts("digits", "digits", 64, 1_197, 300),  # sklearn's 1,797 8x8 images
})
DATASETS = tuple(CATALOG)

#: The four IDX files of MNIST and Fashion-MNIST, in the order recorded in ``Splits.files``.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: Sub-directory names accepted under a data directory D (besides D itself); the first is the cache's.
SUBDIRS = MappingProxyType({"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")})


@dataclass(frozen=True)
class Official:
    """The checksums of one official file: a copy is "verified" if either matches."""

    md5: str  # the published MD5 of the upstream gzip file
    sha256: frozenset[str]  # SHA-256s of byte-exact official copies (upstream or distribution repacks)

    def matches(self, md5: str, sha256: str) -> bool:
        return md5 == self.md5 or sha256 in self.sha256


#: Official checksums of the gzip files, per dataset and file name.
CHECKSUMS: Mapping[str, Mapping[str, Official]] = MappingProxyType(
    {
        "mnist": MappingProxyType(
            {
                "train-images-idx3-ubyte.gz": Official(
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    frozenset({"440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"}),
                ),
                "train-labels-idx1-ubyte.gz": Official(
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    frozenset({"3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"}),
                ),
                "t10k-images-idx3-ubyte.gz": Official(
                    "9fb629c4189551a2d022fa330f9573f3",
                    frozenset({"8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"}),
                ),
                "t10k-labels-idx1-ubyte.gz": Official(
                    "ec29112dd5afa0611ce80d1b7f02629c",
                    frozenset({"f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"}),
                ),
            }
        ),
        # Upstream MD5s (zalandoresearch/fashion-mnist) and the SHA-256s of Debian's
        # recompressed copies (package dataset-fashion-mnist 0.0~git20200523.55506a9-1).
        "fashion_mnist": MappingProxyType(
            {
                "train-images-idx3-ubyte.gz": Official(
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    frozenset({"b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"}),
                ),
                "train-labels-idx1-ubyte.gz": Official(
                    "25c81989df183df01b3e8a0aad5dffbe",
                    frozenset({"0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"}),
                ),
                "t10k-images-idx3-ubyte.gz": Official(
                    "bef4ecab320f06d8554ea6380940ec79",
                    frozenset({"cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"}),
                ),
                "t10k-labels-idx1-ubyte.gz": Official(
                    "bb300cfdad3c16e7a12a480ee83cd310",
                    frozenset({"8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"}),
                ),
            }
        ),
    }
)

#: Download mirrors, tried in order; a file's URL is ``mirror + file name``.
#: (The Fashion-MNIST S3 *website* endpoint only speaks plain HTTP.)
MIRRORS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mnist": (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        "fashion_mnist": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
    }
)

#: Directories where operating-system packages install the files (checked before downloading).
SYSTEM_DIRS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
)


def canonical_name(name: str) -> str:
    """The catalog key of ``name`` (case and ``-``/``_`` ignored), or :class:`DataError`."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in CATALOG:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return key
