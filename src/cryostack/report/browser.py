"""Open a report in headless Chromium and check it the way a reader would see it.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
on file descriptor 3, replies on 4, each a NUL-terminated JSON message), so no network port,
no driver and no extra Python package is needed. :func:`check_page` loads a file, collects
console errors and uncaught exceptions, counts images (and how many failed to decode), tables
and sections, and can save a screenshot.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryostack.errors import CryostackError

#: Executables tried in order (Debian's package is ``chromium``).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")

_PAGE_FACTS = """JSON.stringify({
  ready: document.body && document.body.dataset.ready === "1",
  images: document.images.length,
  broken_images: Array.prototype.filter.call(document.images, function(i){return !(i.complete && i.naturalWidth > 0);}).length,
  tables: document.querySelectorAll("table").length,
  sortable_tables: document.querySelectorAll("table.sortable").length,
  sections: Array.prototype.map.call(document.querySelectorAll("section"), function(s){return s.id;}),
  title: document.title,
  height: document.documentElement.scrollHeight
})"""


@dataclass
class PageCheck:
    """What the browser saw: console errors and exceptions (should be empty) and page facts."""

    errors: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        f = self.facts
        return not self.errors and bool(f.get("ready")) and f.get("broken_images", 1) == 0


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Cdp:
    """A minimal DevTools-protocol client over Chromium's pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.w, self.r = proc, to_browser, from_browser
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout_s: float = 30) -> dict:
        self.next_id += 1
        msg: dict = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout_s, f"reply to {method}")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise CryostackError(f"chromium: {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout_s: float = 30) -> dict:
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read(timeout_s, method)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def _read(self, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise CryostackError(f"chromium: no {what} within {timeout_s:.0f} s")
            ready, _, _ = select.select([self.r], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise CryostackError(f"chromium closed the pipe while waiting for {what}")
                self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return json.loads(raw)


def _high_fd(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def check_page(
    html_path: str | Path,
    *,
    screenshot: str | Path | None = None,
    evaluate: dict[str, str] | None = None,
    width_px: int = 1280,
    max_height_px: int = 4000,
    timeout_s: float = 60,
    chromium: str | None = None,
) -> PageCheck:
    """Load ``html_path`` in headless Chromium; return console errors and page facts.

    ``evaluate``: JavaScript expressions run after the load, their values in ``facts`` under
    the same keys (how tests click a table header or type into a filter). ``screenshot``: a
    PNG of the page from the top, ``width_px`` wide and at most ``max_height_px`` tall.
    Raises :class:`CryostackError` when no Chromium is installed or it does not answer.
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise CryostackError("no Chromium found (Debian: apt-get install chromium); the report check needs it")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="cryostack-chromium-") as profile:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # Moved above 9 so "3<&N 4>&M" cannot clobber one end with the other (bash, since dash
        # reads only one-digit descriptors).
        to_r, from_w = (_high_fd(fd) for fd in (to_r, from_w))
        args = [
            "--headless=new",
            "--no-sandbox",  # containers and CI run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # The protocol wants fds 3 and 4 exactly; the shell moves our pipe ends there.
        proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w}', exe, *args],
            pass_fds=(to_r, from_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        cdp = _Cdp(proc, to_w, from_r)
        try:
            return _check(cdp, url, screenshot, evaluate or {}, width_px, max_height_px, timeout_s)
        finally:
            try:
                cdp.call("Browser.close", timeout_s=5)
            except (CryostackError, OSError):
                pass
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _check(
    cdp: _Cdp, url: str, screenshot, evaluate: dict[str, str], width_px: int, max_height_px: int, timeout_s: float
) -> PageCheck:
    target = cdp.call("Target.createTarget", {"url": "about:blank"}, timeout_s=timeout_s)["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        cdp.call(f"{domain}.enable", session=session)
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width_px, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    cdp.events.clear()
    nav = cdp.call("Page.navigate", {"url": url}, session=session)
    if nav.get("errorText"):
        raise CryostackError(f"chromium could not open {url}: {nav['errorText']}")
    cdp.wait_event("Page.loadEventFired", timeout_s=timeout_s)
    value = cdp.call("Runtime.evaluate", {"expression": _PAGE_FACTS, "returnByValue": True}, session=session)[
        "result"
    ].get("value")
    check = PageCheck(facts=json.loads(value) if value else {})
    for key, expression in evaluate.items():
        r = cdp.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in r:
            check.errors.append(f"evaluate {key}: {r['exceptionDetails'].get('text')}")
        check.facts[key] = r["result"].get("value")
    for e in cdp.events:
        if e.get("sessionId") not in (None, session):
            continue
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            check.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            check.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))  # fmt: skip
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            check.errors.append(f"log: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
    if screenshot is not None:
        height = int(min(max_height_px, max(900, check.facts.get("height", 900))))
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width_px, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        import base64

        from cryostack.io.atomic import atomic_output

        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session=session, timeout_s=timeout_s)
        with atomic_output(screenshot) as tmp:
            tmp.write_bytes(base64.b64decode(shot["data"]))
        check.screenshot = Path(screenshot)
    return check
