"""A run's uploads in a process of their own: ``UploadProcess`` starts a Python process that
runs ``main(URI, EXPERIMENT)`` and hands it the records to upload.

Why a process: importing MLflow and opening its SQLAlchemy store cost ~3 s of CPU, and a
thread beside training shares its interpreter lock. Measured on the ``overfitting`` preset
(400 epochs, 16-18 s untracked): a thread importing MLflow and opening a store while the run
trained added 2.7 s to the run. In its own process the same work runs on another core and the
training process never imports MLflow.

The process runs the same ``Uploader`` as any other (upload at once, then every few seconds,
one warning line per outage) and uploads every record once more when its input ends: when the
training process closes it, or dies. Its log lines reach the training process's log. It
ignores Ctrl-C and SIGTERM (the training process records the interruption, then closes it).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from nnexp.tracking.record import RunRecord
from nnexp.tracking.storelock import absolute_url

log = logging.getLogger("nnexp.tracking")


def _ignore_interruptions() -> None:
    """In the child before it runs Python: an ignored signal stays ignored (Python installs its
    Ctrl-C handler only where SIGINT is not ignored), so no traceback however early it comes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class UploadProcess:
    """The records of one process's runs, uploaded by a process of their own (started with
    the first record). ``start(record)``: upload it from now on; ``close()``: wait until every
    record handed over is uploaded as far as the store takes it."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = absolute_url(uri), experiment
        self.proc: subprocess.Popen | None = None
        self.relay: threading.Thread | None = None
        self.broken = False

    def start(self, record: RunRecord) -> None:
        if self.broken:
            return
        try:
            if self.proc is None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", "from nnexp.tracking.upload_process import main; main()", self.uri,
                     self.experiment],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_ignore_interruptions)
                self.relay = threading.Thread(target=self._relay, name="nnexp-upload-log", daemon=True)
                self.relay.start()
            self.proc.stdin.write(f"{record.dir.resolve()}\n")
            self.proc.stdin.flush()
        except OSError as exc:  # could not start, or it ended: the records stay local
            self.broken = True
            log.warning("the upload process is gone (%s): runs are kept locally; `python -m nnexp.sync` "
                        "uploads them", exc)

    def _relay(self) -> None:
        """The upload process's log lines (``LEVEL<TAB>LOGGER<TAB>MESSAGE``), logged here."""
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) == 3 and parts[0].isdigit():
                logging.getLogger(parts[1]).log(int(parts[0]), parts[2])
            elif line.strip():  # anything else a library printed: passed on as it is
                log.info("%s", line.rstrip())

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.relay.join()


def main(argv: list[str] | None = None) -> None:
    """The upload process: opens the store (ending dead runs of this host), then uploads each
    record named on its input at once and every few seconds; all of them once more at the end."""
    from nnexp.tracking.catch_up import prepare_store
    from nnexp.tracking.tracker import Uploader

    uri, experiment = argv or sys.argv[1:3]  # (python -c CODE URI EXPERIMENT)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(levelno)d\t%(name)s\t%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[out])
    prepare_store(uri, experiment)
    uploader = Uploader()
    for line in sys.stdin:
        uploader.start(RunRecord(Path(line.rstrip("\n"))))
        sys.stdout.flush()
    uploader.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is in the store or the records: MLflow's exit handlers took 0.8 s (measured)
