"""Headless Chromium from the distribution's package, driven over the DevTools protocol (a
websocket, websocket-client): open a local page, and report what it requested, what it logged
as errors and what its images decoded to. No browser is downloaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
         "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB
         # Any host name resolves to nothing: a request that tried the network fails, and shows.
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost")
START_LIMIT_S = 60.0
LOAD_LIMIT_S = 60.0
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
  src: i.getAttribute('src').slice(0, 40), complete: i.complete, width: i.naturalWidth,
  height: i.naturalHeight})))"""
LINKS_JS = """JSON.stringify(Array.from(document.querySelectorAll('[src],[href],[srcset],[poster]'))
  .flatMap(e => ['src', 'href', 'srcset', 'poster'].map(a => e.getAttribute(a)).filter(Boolean))
  .map(v => v.slice(0, 60)))"""


@dataclass
class PageVisit:
    requests: list[str] = field(default_factory=list)
    """URL of every request the page made (data: URLs cut short)."""
    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and the browser's own error log entries."""
    images: list[dict[str, Any]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    """Every src/href/srcset/poster in the DOM (cut short)."""


class DevTools:
    """One websocket to the browser; commands on one page's session (flattened), events kept."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=LOAD_LIMIT_S, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {limit_s:.0f} s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


def _devtools_url(profile: Path, process: subprocess.Popen) -> str:
    """The browser writes its port and path to DevToolsActivePort once it listens."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        lines = marker.read_text().split() if marker.exists() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.2)
    raise TimeoutError(f"chromium did not open its DevTools port within {START_LIMIT_S:.0f} s")


def visit(page: Path, profile: Path) -> PageVisit:
    """Load `page` (a local file) in a fresh headless Chromium with its own profile."""
    assert CHROMIUM is not None
    profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tools = DevTools(_devtools_url(profile, process))
        try:
            target = tools.call("Target.createTarget", url="about:blank")["targetId"]
            tools.session = tools.call("Target.attachToTarget", targetId=target,
                                       flatten=True)["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                tools.call(f"{domain}.enable")
            tools.events.clear()
            tools.call("Page.navigate", url=page.resolve().as_uri())
            tools.wait_for("Page.loadEventFired", LOAD_LIMIT_S)
            found = PageVisit(
                images=json.loads(tools.call("Runtime.evaluate", expression=IMAGES_JS,
                                             returnByValue=True)["result"]["value"]),
                links=json.loads(tools.call("Runtime.evaluate", expression=LINKS_JS,
                                            returnByValue=True)["result"]["value"]))
            for event in tools.events:
                method, params = event.get("method"), event.get("params", {})
                if method == "Network.requestWillBeSent":
                    found.requests.append(params["request"]["url"][:60])
                elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                    found.errors.append(json.dumps(params["args"])[:300])
                elif method == "Runtime.exceptionThrown":
                    found.errors.append(json.dumps(params["exceptionDetails"])[:300])
                elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                    found.errors.append(
                        f"{params['entry']['source']}: {params['entry']['text']}"[:300]
                    )
            return found
        finally:
            tools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
