"""A real headless Chromium driven through chromedriver's WebDriver protocol (plain HTTP, no client
library): load a page, ask the browser what it rendered, take a screenshot."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None where either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    def __init__(self, base: str, session_id: str) -> None:
        self.base, self.id = base, session_id

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}/session/{self.id}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def script(self, source: str) -> Any:
        return self.call("POST", "/execute/sync", {"script": source, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("GET", "/screenshot"))


@contextmanager
def chromium(width: int = 1280, height: int = 4000) -> Iterator[Session]:
    """A fresh browser (its own user-data dir) for the duration of the block."""
    found = find_browser()
    assert found is not None, "no chromium and chromedriver"
    browser, driver = found
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/status", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        body = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": browser, "args": flags}}}}
        request = urllib.request.Request(f"{base}/session", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            session = Session(base, json.loads(response.read())["value"]["sessionId"])
        try:
            yield session
        finally:
            try:
                session.call("DELETE", "")
            except OSError:
                pass
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def file_url(path: Path) -> str:
    return path.resolve().as_uri()
