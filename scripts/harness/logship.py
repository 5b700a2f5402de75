"""A log pipeline as an operator sets one up, for tests: journald (standalone, on tmpfs mounts in
the test process's private mount namespace), rsyslog with hubcache's shipped configuration, and
an Elasticsearch `_bulk` endpoint (Elasticsearch itself is not in Debian) that keeps the documents.
Every process is started here and stopped by its PID."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from harness.engines import _in_private_mount_ns
from harness.proxy import _die_with_parent, free_port

JOURNALD = "/lib/systemd/systemd-journald"
SHIPPED = Path(__file__).resolve().parents[1] / "logging" / "60-hubcache-elasticsearch.conf"
JOURNAL_DIRS = (Path("/run/systemd/journal"), Path("/run/log"), Path("/var/log/journal"))


class BulkSink:
    """Answers like Elasticsearch 8 to what omelasticsearch sends; keeps (index, document) pairs."""

    def __init__(self) -> None:
        self.documents: list[tuple[str, dict]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer({"version": {"number": "8.15.0"}})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                lines = [line for line in body.splitlines() if line.strip()]
                for action, doc in zip(lines[::2], lines[1::2], strict=True):
                    sink.documents.append((json.loads(action)["index"]["_index"], json.loads(doc)))
                self._answer({"took": 1, "errors": False, "items": []})

            def _answer(self, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 30) -> list[tuple[str, dict]]:
        deadline = time.monotonic() + timeout
        while not any(predicate(doc) for _, doc in self.documents):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such document within {timeout} s; got {self.documents[-5:]}")
            time.sleep(0.2)
        return list(self.documents)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LogPipeline:
    """journald -> rsyslog (imjournal, as RHEL sets it up; the shipped file as a user installs it,
    with server= pointed at the sink) -> BulkSink."""

    def __init__(self, workdir: Path) -> None:
        if not _in_private_mount_ns():
            raise RuntimeError("refusing to mount over the journal's directories in the machine's own mount namespace")
        self.workdir = workdir
        self.mounted: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.sink: BulkSink | None = None

    def start(self) -> LogPipeline:
        for d in JOURNAL_DIRS:
            if d.parent.exists():
                d.mkdir(exist_ok=True)
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(d)], check=True)
                self.mounted.append(d)
        self._spawn([JOURNALD], "journald")
        _wait_for_path(Path("/run/systemd/journal/stdout"))
        self.sink = BulkSink()
        work = self.workdir / "rsyslog"
        work.mkdir(parents=True)
        conf = SHIPPED.read_text().replace('server="elasticsearch.internal" serverport="9200"',
                                           f'server="127.0.0.1" serverport="{self.sink.port}"')
        conf = conf.replace("/var/log/hubcache-elasticsearch-errors.json", str(work / "errors.json"))
        (work / "60-hubcache-elasticsearch.conf").write_text(conf)
        (work / "rsyslog.conf").write_text(
            f'global(workDirectory="{work}")\n'
            f'module(load="imjournal" StateFile="imjournal.state")\n'
            f'include(file="{work}/60-hubcache-elasticsearch.conf")\n'
            f'*.* action(type="omfile" file="{work}/other.log")\n')
        self._spawn(["rsyslogd", "-n", "-f", str(work / "rsyslog.conf"), "-i", str(work / "rsyslog.pid")], "rsyslog")
        return self

    def journal_lines(self, identifier: str) -> list[str]:
        out = subprocess.run(["journalctl", "-t", identifier, "-o", "cat", "--no-pager"], check=True,
                             capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if line.strip()]

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent))
        log.close()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.sink:
            self.sink.close()
        for d in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(d)], check=False)


def _wait_for_path(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
