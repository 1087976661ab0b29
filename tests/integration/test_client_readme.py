"""The README's baedal.client snippets run as written (each in a fresh interpreter, as
a user would paste it) and print what their comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"


def client_snippets() -> list[str]:
    text = README.read_text()
    start = text.index("## ZeroMQ-style client")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def test_the_readme_shows_each_pattern_in_under_ten_lines() -> None:
    snippets = client_snippets()
    assert len(snippets) == 3
    for snippet in snippets:
        code = [
            line for line in snippet.splitlines()
            if line.strip() and not line.startswith(("import ", "from "))
        ]
        assert len(code) < 10, snippet


@pytest.mark.parametrize("index", range(3))
def test_readme_snippet_runs_as_written(index: int, tmp_path: Path) -> None:
    snippet = client_snippets()[index]
    # The data directory in the README is a fixed /tmp path; give each run its own.
    snippet = snippet.replace("/tmp/bd-demo", str(tmp_path / "data"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=90, env=env)
    assert result.returncode == 0, result.stderr
    expected = [m.strip() for m in re.findall(r"print\(.*\)\s+# (.*)", snippet)]
    assert result.stdout.split("\n")[: len(expected)] == expected
