"""``python -m nnexp.sync``: upload the runs kept locally to their MLflow store.

Every nnexp run writes its local record first (``record/`` in its output directory) and
reaches the store from there; a run whose store was slow, down, or that was killed is kept
there until this command uploads it. Idempotent: a second sync changes nothing.

    python -m nnexp.sync                         # records under ./outputs and ./multirun
    python -m nnexp.sync multirun/2026-12-01     # records under these directories
    python -m nnexp.sync --tracking-uri http://server:5000 outputs   # to another store
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nnexp.cli.entry import die

DEFAULT_PATHS = ("outputs", "multirun")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nnexp.sync",
                                description="Upload the runs kept locally (their record/ directories) to MLflow.")
    p.add_argument("paths", nargs="*", help=f"directories to search for run records (default: "
                                            f"{', '.join(DEFAULT_PATHS)} where they exist)")
    p.add_argument("--tracking-uri", default=None,
                   help="upload to this store instead of the one each run was started with")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    paths = [Path(p) for p in args.paths] or [Path(p) for p in DEFAULT_PATHS if Path(p).is_dir()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        die("nnexp.sync", f"no such directory: {missing[0]}")
    from nnexp import tracking

    report = tracking.sync_records(paths, args.tracking_uri)
    for where, why in report.failed:
        print(f"nnexp.sync: not uploaded: {where}: {why}", file=sys.stderr)
    total = len(report.uploaded) + report.current + len(report.failed)
    print(f"nnexp.sync: {total} run record(s) under {', '.join(map(str, paths)) or 'nothing'}: "
          f"{len(report.uploaded)} uploaded, {report.current} already in the store, "
          f"{len(report.failed)} not uploaded ({report.seconds:.1f} s)")
    if report.failed:
        raise SystemExit(1)
