"""The built package is the whole product: a wheel installed into a fresh venv serves the
console (every file the page loads) and AMQP, and the sdist carries every run-time file.

This is what ``./scripts/serve.sh`` does on a fresh clone (``pip install .``, not
editable), so a file left out of the package data shows up here as a 404.  The build
runs on a copy of the source tree so the repository gets no ``build/`` or ``*.egg-info``
litter.  It needs the network (build backend and dependencies come from PyPI; pip's
cache is reused) and takes about half a minute; it runs in CI with the rest of the suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pika
import pytest
import requests

from baedal_testing import wait_until

# Building and installing from PyPI takes longer than the suite's 120 s default.
pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "baedal" / "protocols" / "http" / "static"
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "test-artifacts",
    "baedal-data", "bench-results", ".pytest_cache", ".ruff_cache", ".hypothesis",
)
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".html": "text/html"}


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    """The environment without our source tree on the path: the venv must stand alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Assets(HTMLParser):
    """Collects what a page loads: <script src>, <link href> (stylesheets, icons), <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        url = attributes.get("src") if tag in ("script", "img") else None
        if tag == "link":
            url = attributes.get("href")
        if url and not url.startswith(("data:", "#")):
            self.urls.append(url)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=_IGNORE)
    wheels = work / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source)
    sdists = work / "sdists"
    _run(sys.executable, "-m", "build", "--sdist", "--outdir", sdists, source)
    (wheel,) = wheels.glob("baedal-*.whl")
    (sdist,) = sdists.glob("baedal-*.tar.gz")
    return {"work": work, "wheel": wheel, "sdist": sdist}


# Not runtime files: the optional C speed-ups' source (the sdist carries it, checked
# below) and a build of them in the checkout (each wheel builds its own, or none).
_BUILD_ONLY = {".pyc", ".c", ".so", ".pyd"}


def _package_files() -> set[str]:
    """Every file under src/baedal a running broker may load (sources and data)."""
    return {
        path.relative_to(REPO / "src").as_posix()
        for path in (REPO / "src" / "baedal").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in _BUILD_ONLY
    }


def test_wheel_contains_every_runtime_file(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
    missing = _package_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert "baedal/protocols/http/static/index.html" in names


def test_sdist_contains_every_runtime_file(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        # members are "baedal-<version>/src/baedal/..."
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    missing = {f"src/{name}" for name in _package_files()} - names
    assert not missing, f"not in the sdist: {sorted(missing)}"
    assert {"pyproject.toml", "README.md", "MANIFEST.in"} <= names
    # what an install from the sdist needs to build the optional speed-ups
    assert {"setup.py", "src/baedal/_speedups/_records.c"} <= names


def test_broker_installed_from_the_wheel_serves_console_and_amqp(built: dict[str, Path]) -> None:
    work = built["work"]
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", built["wheel"], timeout=900)
    # The broker must come from the venv, not from this checkout.
    location = _run(python, "-c", "import baedal; print(baedal.__file__)", cwd=work).strip()
    assert Path(location).resolve().is_relative_to(venv.resolve()), location

    amqp_port, http_port = _free_port(), _free_port()
    data_dir = work / "data"
    log_path = work / "broker.log"
    with open(log_path, "wb") as log_file:
        broker = subprocess.Popen(
            [str(venv / "bin" / "baedal"), "serve", "--port", str(amqp_port),
             "--http-port", str(http_port), "--data-dir", str(data_dir)],
            cwd=work, env=_clean_env(), stdout=log_file, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{http_port}"

    def answers() -> bool:
        assert broker.poll() is None, log_path.read_text()
        try:
            return requests.get(f"{base}/console/", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, timeout=60, what="the installed broker's console answers")
        page = requests.get(f"{base}/console/", timeout=5)
        assert page.status_code == 200
        assert page.content == (STATIC / "index.html").read_bytes()
        assets = _Assets()
        assets.feed(page.content.decode("utf-8"))
        assert any(u.endswith(".js") for u in assets.urls), assets.urls
        assert any(u.endswith(".css") for u in assets.urls), assets.urls
        for url in assets.urls:
            absolute = urljoin(f"{base}/console/", url)
            response = requests.get(absolute, timeout=5)
            assert response.status_code == 200, f"{absolute}: {response.status_code}"
            assert response.content, f"{absolute}: empty body"
            relative = urlparse(absolute).path.removeprefix("/console/")
            assert response.content == (STATIC / relative).read_bytes(), absolute
            expected_type = CONTENT_TYPES.get(Path(relative).suffix)
            if expected_type:
                assert expected_type in response.headers["Content-Type"], absolute

        connection = pika.BlockingConnection(
            pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{amqp_port}/")
        )
        channel = connection.channel()
        channel.queue_declare("wheel-check")
        channel.basic_publish("", "wheel-check", b"from the wheel")
        method, _props, body = wait_until(
            lambda: (got := channel.basic_get("wheel-check", auto_ack=True))[0] and got,
            what="the published message comes back",
        )
        assert body == b"from the wheel"
        connection.close()
    finally:
        if broker.poll() is None:
            broker.send_signal(signal.SIGTERM)
        try:
            status = broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
            raise
    assert status == 0, log_path.read_text()
