"""``nnexp-bench`` / ``python -m nnexp.bench``: parse the options, pin BLAS to one thread, print
the header and each chosen section's table."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Sequence

from threadpoolctl import threadpool_limits

import nnexp.engine.stepper  # noqa: F401  (loads scipy's BLAS before the thread limit is applied)
from nnexp.bench.context import QUICK_IMAGES, QUICK_REFERENCE_IMAGES, header, load_bench
from nnexp.bench.sections import DEFAULT_SECTIONS, SECTIONS
from nnexp.config.errors import NnexpError


def sections_help() -> str:
    """The ``--help`` epilog: every section with its description."""
    width = max(len(name) for name in SECTIONS)
    lines = [f"  {name:{width}s}  {s.description}{' (default)' if name in DEFAULT_SECTIONS else ''}"
             for name, s in SECTIONS.items()]
    return "sections (--only NAME):\n" + "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nnexp-bench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=sections_help(),
        description="How fast nnexp trains, tracks, searches and sweeps (BLAS pinned to 1 thread):\n"
                    "seconds per epoch of the engine's SGD next to the book's per-example algorithm,\n"
                    "and the other sections listed below.")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per case (default 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: at most {QUICK_IMAGES:,} MNIST images (or digits), "
                        f"reference on {QUICK_REFERENCE_IMAGES} images, short studies and sweeps")
    p.add_argument("--dataset", choices=("mnist", "digits"), default=None,
                   help="default: MNIST if found locally, else digits")
    p.add_argument("--data-dir", default=None, help="directory holding the MNIST IDX files")
    p.add_argument("--only", choices=tuple(SECTIONS), action="append", metavar="NAME",
                   help="run only this section (repeatable; see the list below); "
                        f"default: {', '.join(DEFAULT_SECTIONS)}")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes for the study and sweep sections (default 2)")
    p.add_argument("--methods", default=None, metavar="A,B",
                   help="the study section's methods (default: all); without broad_strategy each runs its "
                        "own default budget")
    p.add_argument("--study-seeds", type=int, default=3, help="the study section's study seeds (default 3)")
    p.add_argument("--first-study-seed", type=int, default=0, metavar="S",
                   help="the study section runs study seeds S, S+1, ... (default 0; to add seeds to an earlier run)")
    args = p.parse_args(argv)
    from nnexp.bench.study import STUDY_METHODS

    if args.methods is not None:
        args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        unknown = [m for m in args.methods if m not in STUDY_METHODS]
        if unknown or not args.methods:
            p.error(f"unknown --methods {', '.join(unknown) or '(none)'}; choose from: {', '.join(STUDY_METHODS)}")
    if args.first_study_seed < 0:
        p.error("--first-study-seed must be at least 0")
    if args.study_seeds < 1:
        p.error("--study-seeds must be at least 1")
    if args.epochs < 1:
        p.error("--epochs must be at least 1")
    args.seeds = range(args.first_study_seed, args.first_study_seed + args.study_seeds)
    return args


def run(args: argparse.Namespace) -> None:
    """Print the header, then each chosen section's table as soon as it is measured."""
    say = functools.partial(print, flush=True)
    bench = load_bench(args.dataset, args.data_dir, args.epochs, args.quick, workers=args.workers, progress=say)
    bench.methods, bench.study_seeds = args.methods, args.seeds
    say("\n".join(header(bench)))
    for name in args.only or DEFAULT_SECTIONS:
        say()
        say(SECTIONS[name].run(bench).render())


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with threadpool_limits(limits=1):
            run(args)
    except NnexpError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
