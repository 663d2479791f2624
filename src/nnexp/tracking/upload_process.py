"""The runs of a launching process (a run, a sweep) and of the processes it starts on this host,
uploaded by one process of their own, so that no training process imports MLflow.

Why a process: importing MLflow and opening its SQLAlchemy store cost ~1.6 s of CPU, and a thread
beside training shares its interpreter lock. Measured on the ``overfitting`` preset (400 epochs,
16-18 s untracked): a thread importing MLflow and opening a store while the run trained added
2.7 s to the run. Why one per sweep: each process that uploads pays that cost once. Measured on
``-m seed=0,1,2,3,4 eta=0.025,0.25,2.5 epochs=3`` (two processes, 8 + 7 runs): tracking added
2.7 s of CPU to the launching process and 2.0 s to its worker, 2.9 s to the sweep's wall clock.

``UploadProcess`` starts it. It listens on a Unix socket (``address``) that the launching process
binds before the upload process starts, so no client comes too early, and that a sweep names in
``NNEXP_UPLOADS`` for the processes it starts (``uploader()``). An ``UploadClient`` is one
population's connection: ``start(record)`` (uploaded at once, then every few seconds while its
run trains) and ``close()`` (returns once its records are in the store, as far as the store takes
them). ``end_sweep`` ends a sweep's parent run there. The process runs the same ``Uploader`` as
any other (one warning line per outage) and relays its log lines to the launching process's log.
Its stdin is its lifeline: when the launching process closes it, or dies, every record is
uploaded once more and the process ends. It ignores Ctrl-C and SIGTERM (the launching process
records the interruption, then closes it). Killed with its launching process (SIGKILL to the
group: no clean-up runs), it leaves its socket's folder behind: the next upload process on the
host removes such folders (``remove_stale_folders``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nnexp.config.names import UPLOADS_ENV
from nnexp.tracking.record import RunRecord
from nnexp.tracking.storelock import absolute_url

log = logging.getLogger("nnexp.tracking")

FOLDER_PREFIX = "nnexp-uploads-"  # a temporary folder holding the upload process's socket
STALE_SECONDS = 60.0  # a folder this old whose socket nobody listens on is a killed process's


def remove_stale_folders(root: Path | None = None, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove the socket folders that upload processes killed with their launching process left
    in ``root`` (the temporary directory): this user's, older than ``older_than`` seconds (a
    folder is bound within microseconds of its creation), whose socket no process listens on.
    Returns the folders removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(FOLDER_PREFIX + "*"):
        try:
            st = folder.stat()
        except OSError:  # removed meanwhile
            continue
        if st.st_uid != os.getuid() or time.time() - st.st_mtime < older_than or _listened_on(folder / "socket"):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _listened_on(address: Path) -> bool:
    """Does a process listen on the Unix socket at ``address``? (A live upload process takes the
    probe for a client that sent nothing and left.)"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # never blocks: a full backlog (a process stopped, not dead) is EAGAIN
    try:
        probe.connect(str(address))
        return True
    except (BlockingIOError, TimeoutError):  # a full backlog: someone listens, but accepts no more now
        return True
    except OSError:  # no socket there, or nobody listening (refused)
        return False
    finally:
        probe.close()


def _ignore_interruptions() -> None:
    """In the child before it runs Python: an ignored signal stays ignored (Python installs its
    Ctrl-C handler only where SIGINT is not ignored), so no traceback however early it comes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class UploadProcess:
    """The upload process of a launching process: started at once (raises OSError if it cannot
    be); ``client()`` connects a population to it; ``close()`` waits until every record it was
    given is uploaded as far as the store takes it, and it has ended."""

    def __init__(self, uri: str, experiment: str) -> None:
        remove_stale_folders()
        self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
        self.address = str(self.folder / "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.address)
            listener.listen(128)
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from nnexp.tracking.upload_process import main; main()",
                 absolute_url(uri), experiment, str(listener.fileno())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=(listener.fileno(),),
                preexec_fn=_ignore_interruptions)
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        finally:
            listener.close()  # the upload process holds it now
        self.relay = threading.Thread(target=self._relay, name="nnexp-upload-log", daemon=True)
        self.relay.start()

    def client(self) -> "UploadClient":
        return UploadClient(self.address)

    def _relay(self) -> None:
        """The upload process's log lines (``LEVEL<TAB>LOGGER<TAB>MESSAGE``), logged here."""
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) == 3 and parts[0].isdigit():
                logging.getLogger(parts[1]).log(int(parts[0]), parts[2])
            elif line.strip():  # anything else a library printed: passed on as it is
                log.info("%s", line.rstrip())

    def close(self) -> None:
        if self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()
        self.relay.join()
        shutil.rmtree(self.folder, ignore_errors=True)


class UploadClient:
    """One population's connection to an upload process (raises OSError if there is none at
    ``address``). Should the upload process go, its records are uploaded from this process from
    then on (an ``Uploader`` thread), after one warning line."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.io = self.sock.makefile("rw", encoding="utf-8", newline="\n")
        self.records: list[RunRecord] = []
        self.own = None  # the Uploader this process uses once the upload process is gone

    def _ask(self, verb: str, *args: str) -> str | None:
        """Send one request; its reply line for ``flush`` and ``end-sweep`` (None if gone)."""
        if self.own is not None:
            return None
        try:
            self.io.write("\t".join((verb, *args)) + "\n")
            self.io.flush()
            if verb == "start":  # no reply
                return ""
            reply = self.io.readline()
            if reply:
                return reply.rstrip("\n")
            raise ConnectionError("it ended")
        except OSError as exc:
            self._gone(exc)
            return None

    def _gone(self, exc: BaseException) -> None:
        from nnexp.tracking.tracker import Uploader

        log.warning("the upload process is gone (%s): this process uploads its runs from now on", exc)
        self.own = Uploader()
        for record in self.records:
            self.own.start(record)

    def start(self, record: RunRecord, wait: bool = True) -> None:
        """Upload the record at once (in the upload process), then every few seconds; ``wait``:
        ``close`` returns once it is in the store."""
        if wait:
            self.records.append(record)
        if self.own is not None:
            self.own.start(record)
        else:
            self._ask("start", str(record.dir.resolve()))

    def upload_now(self, record: RunRecord) -> bool:
        """Upload what the record holds now; whether the store took it."""
        reply = None if self.own is not None else self._ask("flush", str(record.dir.resolve()))
        return self.own.upload_now(record) if reply is None else reply == "1"

    def flush(self, record: RunRecord) -> None:
        """Return once what the record holds is in the store (or the store did not take it)."""
        self.upload_now(record)

    def forget(self, record: RunRecord) -> None:
        """Another process goes on with the run (and uploads it): not waited for here."""
        self.records = [r for r in self.records if r.dir != record.dir]
        if self.own is not None:
            self.own.forget(record)

    def close(self) -> None:
        """Return once each record is in the store, as far as the store takes it."""
        for record in self.records:
            self.flush(record)
        if self.own is not None:
            self.own.close()
        self.records = []
        try:
            self.io.close()
        except OSError:  # gone meanwhile: nothing was left to send
            pass
        self.sock.close()

    def end_sweep(self, record_dir: str, status: str) -> str:
        """End a sweep's parent run (``ParentRun.end_sweep``) in the upload process; its line."""
        line = self._ask("end-sweep", status, record_dir)
        if line is None:
            from nnexp.tracking.tracker import ParentRun

            line = ParentRun.of_record(Path(record_dir)).end_sweep(status)
        self.close()
        return line


def uploader():
    """How this process's runs reach the store: the sweep's upload process if one runs on this
    host (``NNEXP_UPLOADS``: a job of a sweep, in the launching process or one it started), else
    an ``Uploader`` thread of its own (a study, the Python API, a cluster job on another host)."""
    from nnexp.tracking.tracker import Uploader

    address = os.environ.get(UPLOADS_ENV)
    if address:
        try:
            return UploadClient(address)
        except OSError:
            pass
    return Uploader()


@contextlib.contextmanager
def serving(uri: str, experiment: str):
    """While the block runs, an upload process for the runs of this process and of those it
    starts on this host (a study's workers, ``runner.run_jobs``'s): they find it through
    ``NNEXP_UPLOADS`` (``uploader()``). None if one already serves them (a sweep's), or if it
    cannot start (each process then uploads its own runs). Start it once the store exists (its
    first opener creates it): two processes creating one SQLite store at once collide."""
    if os.environ.get(UPLOADS_ENV):
        yield None
        return
    try:
        process = UploadProcess(uri, experiment)
    except OSError as exc:
        log.warning("no upload process (%s): each process uploads its own runs", exc)
        yield None
        return
    os.environ[UPLOADS_ENV] = process.address
    try:
        yield process
    finally:
        os.environ.pop(UPLOADS_ENV, None)
        process.close()


def main(argv: list[str] | None = None) -> None:
    """The upload process: opens the store (ending dead runs of this host), then serves its
    clients (a thread each) until its stdin ends and every client has gone; then uploads every
    record once more."""
    from nnexp.tracking.catch_up import prepare_store
    from nnexp.tracking.tracker import ParentRun, Uploader

    uri, experiment, fd = argv or sys.argv[1:4]  # (python -c CODE URI EXPERIMENT LISTENER)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(levelno)d\t%(name)s\t%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[out])
    listener = socket.socket(fileno=int(fd))
    opened, uploads = threading.Event(), Uploader()
    connected = threading.Condition()  # guards ``clients``: connections open now
    clients = [0]

    def serve(conn: socket.socket) -> None:
        try:
            _serve(conn)
        except OSError:  # the client died mid-request: what it sent before is uploaded at the end
            pass
        finally:
            with connected:
                clients[0] -= 1
                connected.notify_all()

    def _serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rw", encoding="utf-8", newline="\n") as io:
            for line in io:
                verb, *args = line.rstrip("\n").split("\t")
                if verb == "start":
                    uploads.add(RunRecord(Path(args[0])))  # in the list at once: uploaded at the end whatever happens
                opened.wait()
                if verb == "start":
                    uploads.start(RunRecord(Path(args[0])))
                elif verb == "flush":
                    io.write(f"{int(uploads.upload_now(RunRecord(Path(args[0]))))}\n")
                elif verb == "end-sweep":
                    io.write(ParentRun.of_record(Path(args[1])).end_sweep(args[0]).replace("\n", " ") + "\n")
                io.flush()
                sys.stdout.flush()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut: the process ends
                return
            with connected:
                clients[0] += 1
            threading.Thread(target=serve, args=(conn,), name="nnexp-upload-client", daemon=True).start()

    threading.Thread(target=accept, name="nnexp-upload-accept", daemon=True).start()
    prepare_store(uri, experiment)
    opened.set()
    for _ in sys.stdin:  # the lifeline: until the launching process closes it, or dies
        pass
    folder = Path(listener.getsockname()).parent  # (the launching process may be gone: removed here too)
    listener.shutdown(socket.SHUT_RDWR)  # no new clients; those still training (the workers of a
    with connected:  # launching process killed) are served until they end
        connected.wait_for(lambda: clients[0] == 0)
    uploads.close()
    if folder.name.startswith(FOLDER_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is in the store or the records: MLflow's exit handlers took 0.8 s (measured)
