"""A small Chrome DevTools Protocol client over ``--remote-debugging-pipe``, for the report tests.

Chromium reads commands on its fd 3 and writes answers and events on its fd 4,
each message a JSON document ended by a NUL byte: no port, no websocket.  The
browser runs headless in its own session (process group) with a throwaway
profile; :meth:`Chromium.close` ends it and every process it started, whatever
state it is in.  Every wait has a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
HIGH_FD = 10
"""The pipe ends the child gets are first moved to fds >= this, away from 3 and 4."""

# Put the two pipe ends on fds 3 and 4, then become chromium (a tiny exec wrapper: no
# preexec_fn, which is unsafe in a process with threads, and no shell fd-number limits).
_EXEC_WITH_PIPE = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.dup2(int(sys.argv[2]), 4)\n"
    "os.close(int(sys.argv[1])); os.close(int(sys.argv[2]))\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class CdpError(RuntimeError):
    """The browser answered a command with an error, broke the pipe, or timed out."""


class Chromium:
    """A headless Chromium driven through the DevTools protocol.

    ``with Chromium(binary, profile_dir) as browser: page = browser.new_page()``
    """

    def __init__(self, binary: str, profile: Path, *, width: int = 1400, height: int = 1000,
                 timeout: float = DEFAULT_TIMEOUT, log: Path | None = None) -> None:
        self.binary = binary
        self.profile = Path(profile)
        self.width = width
        self.height = height
        self.timeout = timeout
        self.log = log or self.profile.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self._to_browser = -1
        self._from_browser = -1
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        commands_read, commands_write = os.pipe()
        answers_read, answers_write = os.pipe()
        child_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
        child_write = fcntl.fcntl(answers_write, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
        os.close(commands_read)
        os.close(answers_write)
        self._to_browser, self._from_browser = commands_write, answers_read
        argv = [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--mute-audio",
                "--disable-crash-reporter", "--disable-breakpad",
                "--allow-file-access-from-files", f"--window-size={self.width},{self.height}",
                "about:blank"]
        try:
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-c", _EXEC_WITH_PIPE, str(child_read), str(child_write),
                     *argv],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    pass_fds=(child_read, child_write), start_new_session=True)
        finally:
            os.close(child_read)
            os.close(child_write)
        os.set_blocking(self._from_browser, False)

    # -- the pipe ---------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        deadline = time.monotonic() + self.timeout
        while data:
            _, ready, _ = select.select([], [self._to_browser], [], self._left(deadline))
            if not ready:
                raise CdpError("timed out writing to chromium")
            try:
                written = os.write(self._to_browser, data)
            except BrokenPipeError:
                raise CdpError(f"chromium closed its pipe (log: {self.log})") from None
            data = data[written:]

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CdpError(f"timed out waiting for chromium (log: {self.log})")
        return left

    def _receive(self, deadline: float) -> dict[str, Any]:
        """The next message from the browser (blocking until ``deadline``)."""
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], self._left(deadline))
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CdpError(f"chromium exited or closed its pipe (log: {self.log})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send a command and return its result; events seen meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self._events.append(answer)

    def wait_event(self, method: str, *, session: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """The first event ``method`` (of ``session``) not yet consumed; waits for it."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for number, event in enumerate(self._events):
                if event.get("method") == method and (
                        session is None or event.get("sessionId") == session):
                    del self._events[number]
                    return event.get("params", {})
            message = self._receive(deadline)
            if "method" in message:
                self._events.append(message)

    def drop_events(self, method: str) -> None:
        self._events = [event for event in self._events if event.get("method") != method]

    # -- pages -----------------------------------------------------------------------------

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        return page

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """End the browser: politely, then by force; reap it; close the pipe."""
        process = self.process
        try:
            if process is not None and process.poll() is None:
                with contextlib.suppress(CdpError, OSError):
                    self.timeout = min(self.timeout, CLOSE_TIMEOUT)
                    self._send({"id": self._next_id + 1, "method": "Browser.close",
                                "params": {}})
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=CLOSE_TIMEOUT)
        finally:
            if process is not None:
                # Its helpers (zygote, renderers, utility processes) share its process group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=CLOSE_TIMEOUT)
            for fd in (self._to_browser, self._from_browser):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._to_browser = self._from_browser = -1
            self.process = None


class Page:
    """One tab, attached in flat mode (commands carry its session id)."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded."""
        self.browser.drop_events("Page.loadEventFired")
        answer = self.call("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise CdpError(f"navigating to {url}: {answer['errorText']}")
        self.wait_load()

    def wait_load(self) -> None:
        self.browser.wait_event("Page.loadEventFired", session=self.session)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        answer = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"evaluating {expression!r}: {text}")
        return answer.get("result", {}).get("value")

    def click_at(self, x: float, y: float) -> None:
        """A real left click (press and release) at viewport coordinates."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params: dict[str, Any] = {"type": kind, "x": x, "y": y}
            if kind != "mouseMoved":
                params.update(button="left", clickCount=1)
            self.call("Input.dispatchMouseEvent", params)

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        """Save a PNG of the viewport (or of the whole page) to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            width, height = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": width, "height": min(height, 8000),
                                "scale": 1})
        data = self.call("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


__all__ = ["CdpError", "Chromium", "Page"]
