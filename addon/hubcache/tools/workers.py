"""`hubcache run --workers N`: a supervisor and N proxy processes on one port and one store.

The supervisor opens the store (taking its lock, dropping interrupted writes, migrating it) and
keeps it open, makes a private runtime directory (the key that signs blob URLs, so that a client
redirected by one worker may reach any other; prometheus-client's multiprocess files), and starts
N workers: `hubcache run` again, with its place in the environment (hubcache/worker.py). Each
worker is a whole mitmproxy that listens on the same address with SO_REUSEPORT (the kernel spreads
new connections over them) and opens the store shared. The workers write to the supervisor's
stdout and stderr: one log stream, each line naming its worker.

A worker that dies (killed, or a crash) is noticed within POLL_SECONDS: its writes in progress and
its claims on downloads are dropped, so that the other workers' flights that followed them take
them over (serve/siblings.py); then it is started again, after a pause that grows while it keeps
dying. A worker that exits with an error before it ever served (bad options) ends the supervisor
with that exit status. SIGTERM or SIGINT stops every worker (SIGTERM, then SIGKILL after
STOP_SECONDS), drops what they left, closes the store and removes the runtime directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from hubcache import logs, worker
from hubcache.store import Store, StoreError, StoreInUse
from hubcache.tools import preflight

log = logging.getLogger("hubcache.tools.workers")  # not __name__: the supervisor runs this module as __main__

POLL_SECONDS = 0.2
STOP_SECONDS = 15  # a worker's time to stop on SIGTERM before it is killed
EARLY_SECONDS = 10  # a worker that ends within this of its start did not come up
RESTART_PAUSE_MAX = 30  # seconds, for a worker that keeps dying
STOP_GRACE = 1.0  # seconds a worker's stop waits for the supervisor's own stop signal


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    deaths: int = 0  # early deaths in a row: the pause before the next start grows with them


def _die_with_supervisor() -> None:  # in the worker, before exec
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a killed supervisor stops its workers


def _how(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


class Supervisor:
    def __init__(self, count: int, argv: list[str], store: str, max_size: int) -> None:
        self.count = count
        self.argv = argv  # `hubcache` arguments, from `run` on: each worker runs them again
        self.store_path = store
        self.max_size = max_size
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.runtime = Path(tempfile.mkdtemp(prefix="hubcache-workers-"))  # 0700
        self.store: Store | None = None

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({worker.INDEX: str(index), worker.COUNT: str(self.count), worker.RUNTIME: str(self.runtime),
                    "PROMETHEUS_MULTIPROC_DIR": str(self.runtime / worker.METRICS_DIR)})
        return env

    def _start(self, index: int, deaths: int = 0) -> None:
        cmd = [sys.executable, "-m", "hubcache.tools.cli", *self.argv]
        proc = subprocess.Popen(cmd, env=self._env(index), preexec_fn=_die_with_supervisor)  # noqa: PLW1509
        self.workers[index] = _Worker(index, proc, deaths=deaths)

    def run(self) -> int:
        """Start the workers and look after them until told to stop; the exit status."""
        try:
            self.store = Store(self.store_path, max_size=self.max_size)  # recovers; held while the workers run
        except StoreError as e:  # taken since `hubcache run` checked it, or broken: its exit codes
            print(f"hubcache: {e}", file=sys.stderr)
            return preflight.EXIT_STORE_IN_USE if isinstance(e, StoreInUse) else preflight.EXIT_STORE_UNUSABLE
        (self.runtime / worker.SECRET_FILE).write_bytes(os.urandom(32))
        (self.runtime / worker.METRICS_DIR).mkdir()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop_signal)
        try:
            for index in range(1, self.count + 1):
                self._start(index)
            logs.event(log, logging.INFO, "workers_started", f"{self.count} workers share the port and the store "
                       f"(pids {' '.join(str(w.proc.pid) for w in self.workers.values())})",
                       workers=self.count, pids=[w.proc.pid for w in self.workers.values()])
            return self._watch()
        finally:
            self._stop_all()
            if self.store is not None:
                self.store.close()
            shutil.rmtree(self.runtime, ignore_errors=True)

    def _stop_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _watch(self) -> int:
        pending: dict[int, tuple[float, int]] = {}  # worker index -> (when to start it again, its early deaths)
        while not self.stopping:
            time.sleep(POLL_SECONDS)
            now = time.monotonic()
            for index, w in list(self.workers.items()):
                code = w.proc.poll()
                if code is None or self.stopping:
                    continue
                del self.workers[index]
                if code in (0, -signal.SIGTERM, -signal.SIGINT) and self._stopping_soon():
                    self._cleanup(w.proc.pid)  # stopped with the rest (systemd's stop, Ctrl-C): not a death
                    continue
                early = now - w.started < EARLY_SECONDS
                if early and code > 0:  # it never came up (options, a port): every worker would fail alike
                    logs.event(log, logging.ERROR, "worker_failed", f"worker {index} (pid {w.proc.pid}) could not "
                               f"start ({_how(code)}; its lines above say why): stopping", worker=index, status=code)
                    return code
                deaths = w.deaths + 1 if early else 0
                pause = min(2 ** deaths, RESTART_PAUSE_MAX)
                self._died(index, w, code, pause)
                pending[index] = (now + pause, deaths)
            for index, (when, deaths) in list(pending.items()):
                if now >= when and not self.stopping:
                    del pending[index]
                    self._start(index, deaths)
        return 0

    def _stopping_soon(self) -> bool:
        """A worker that exited on SIGTERM or SIGINT, or with status 0: whether the supervisor is
        being stopped too (systemd signals the whole unit; a terminal's Ctrl-C the whole group),
        its own signal arriving a moment later."""
        deadline = time.monotonic() + STOP_GRACE
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.stopping

    def _cleanup(self, pid: int) -> int:
        """Drop what a dead worker left: its writes in progress, its claims, its reader slots, its
        live metrics. Returns how many writes there were."""
        dropped = 0
        if self.store is not None:
            try:
                dropped = self.store.drop_writes_of(pid)
                self.store.reader_check()
            except StoreError as e:
                logs.event(log, logging.ERROR, "worker_cleanup_failed", f"the writes of dead worker pid {pid} could not "
                           f"be dropped ({e}): they are dropped at the next start", pid=pid, reason=str(e))
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.runtime / worker.METRICS_DIR))
        return dropped

    def _died(self, index: int, w: _Worker, code: int, pause: int) -> None:
        dropped = self._cleanup(w.proc.pid)
        logs.event(log, logging.WARNING, "worker_died",
                   f"worker {index} (pid {w.proc.pid}) died ({_how(code)}): {dropped} "
                   f"{'download' if dropped == 1 else 'downloads'} it had under way dropped, which the other workers "
                   f"take over; starting it again in {pause} s",
                   worker=index, pid=w.proc.pid, status=code, dropped=dropped, restart_in=pause)

    def _stop_all(self) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for w in self.workers.values():
            try:
                w.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logs.event(log, logging.WARNING, "worker_killed", f"worker {w.index} (pid {w.proc.pid}) did not stop "
                           f"within {STOP_SECONDS} s of SIGTERM: killed", worker=w.index, pid=w.proc.pid)
                w.proc.kill()
                w.proc.wait()
            self._cleanup(w.proc.pid)  # a download its SIGTERM cut short leaves a write in progress
        self.workers.clear()


def become_supervisor(count: int, argv: list[str], store: str, max_size: int, log_format: str, log_level: str) -> NoReturn:
    """Replace this process (`hubcache run`, which loaded mitmproxy to check the options) with a
    supervisor that loads only the store: ~20 MiB instead of ~80 held for the workers' lifetime.
    Its pid stays: systemd's main process, the harness's child."""
    spec = {"count": count, "argv": argv, "store": store, "max_size": max_size, "log_format": log_format,
            "log_level": log_level}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "hubcache.tools.workers", json.dumps(spec)])


class _TextFormatter(logging.Formatter):
    """The supervisor's lines as mitmproxy's terminal log writes the workers': [HH:MM:SS.mmm] text."""

    default_time_format = "%H:%M:%S"
    default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        return f"[{self.formatTime(record)}] {record.getMessage()}"


def main(args: list[str]) -> int:
    spec = json.loads(args[0])
    logs.install()
    handler = logging.StreamHandler(sys.stdout)  # where the workers' mitmproxy writes its log
    handler.setFormatter(logs.JsonFormatter() if spec["log_format"] == "json" else _TextFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger("hubcache").setLevel(spec["log_level"].upper())
    return Supervisor(spec["count"], spec["argv"], spec["store"], spec["max_size"]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
