"""The documentation builds with warnings as errors (the same command CI and CONTRIBUTING use)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    missing = [m for m in ("sphinx", "myst_parser", "furo", "sphinx_click") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"docs tools not installed ({', '.join(missing)}): pip install -e \".[docs]\""
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    for page in ("index", "quickstart", "runtimes", "cli", "api", "troubleshooting"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    api = (tmp_path / "html" / "api.html").read_text()
    assert "EnvServer" in api and "RuntimeDriver" in api  # autodoc really ran
