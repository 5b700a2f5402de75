"""Headless chromium (Debian's) driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
null-terminated JSON on fds 3 and 4, no websocket library): load a page, and tell what a person
would see (the rendered text), every URL the page asked for, and a screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.proxy import _die_with_parent, terminate

CHROMIUM = "chromium"


def missing() -> str:
    return "" if shutil.which(CHROMIUM) else "chromium is not installed (apt-get install chromium)"


@dataclass
class Loaded:
    text: str  # document.body.innerText: the text as rendered, hidden elements left out
    requested: list[str]  # every URL the page's loading asked for, the page itself first
    screenshot: bytes  # PNG of the whole page
    title: str = ""
    console: list[str] = field(default_factory=list)  # what the page logged (a CSP violation would be here)


class Browser:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._to, self._from = -1, -1
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def start(self) -> Browser:
        to_r, to_w = os.pipe()  # we write commands, chromium reads them on fd 3
        from_r, from_w = os.pipe()  # chromium writes answers on fd 4
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
               f"--user-data-dir={self.workdir / 'profile'}", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1200,900", "about:blank"]

        def fds() -> None:  # in the child: the pipe's ends on fds 3 and 4, kept across exec
            a, b = os.dup(to_r), os.dup(from_w)  # out of the way first: either may be 3 or 4 already
            os.dup2(a, 3)
            os.dup2(b, 4)
            _die_with_parent()

        self.proc = subprocess.Popen(cmd, stdout=open(self.workdir / "chromium.log", "wb"), stderr=subprocess.STDOUT,
                                     preexec_fn=fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self._to, self._from = to_w, from_r
        return self

    def stop(self) -> None:
        for fd in (self._to, self._from):
            if fd >= 0:
                os.close(fd)
        self._to = self._from = -1
        if self.proc:
            terminate(self.proc)
            self.proc = None

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium went away: {(self.workdir / 'chromium.log').read_text()[-2000:]}")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, session: str = "", timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            got = self._read(deadline)
            if got.get("id") == self._id:
                if "error" in got:
                    raise RuntimeError(f"{method}: {got['error']}")
                return got.get("result", {})
            self.events.append(got)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            got = self._read(deadline)
            self.events.append(got)
            if got.get("method") == method:
                return got

    def load(self, url: str) -> Loaded:
        """Open `url` in a new tab, wait for its load event, and read what it shows."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        s = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Network.enable", s)
        self.call("Page.enable", s)
        self.call("Runtime.enable", s)
        self.call("Log.enable", s)  # a blocked load (Content-Security-Policy) is told there
        self.events.clear()
        self.call("Page.navigate", s, url=url)
        self.wait_event("Page.loadEventFired")
        time.sleep(0.5)  # anything the page would load after its load event
        self.call("Runtime.evaluate", s, expression="1")  # drains the events that came meanwhile
        text = self.call("Runtime.evaluate", s, expression="document.body.innerText", returnByValue=True)["result"]["value"]
        title = self.call("Runtime.evaluate", s, expression="document.title", returnByValue=True)["result"]["value"]
        shot = self.call("Page.captureScreenshot", s, format="png", captureBeyondViewport=True)["data"]
        requested = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        console = [json.dumps(e["params"]) for e in self.events
                   if e.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")]
        return Loaded(text, requested, base64.b64decode(shot), title, console)

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
