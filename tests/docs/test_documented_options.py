"""Every sandbox keyword the docs show exists, so the docs cannot promise an option again.

Keywords are taken from the docs themselves: calls of the sandbox classes in code examples and
inline code (``SandboxEnv(..., runtime="ray")``), the parameter table of the sandboxes page, and
inline ``name=`` mentions on the sandbox and serving pages. They are checked against the real
signatures.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlmesh.sandbox.model import _OPTIONS as MODEL_SESSION_OPTIONS
from rlmesh.sandbox.model import SandboxModelBase
from rlmesh.sandbox.session import SandboxSessionBase, SandboxVectorEnvBase
from rlmesh.server.env import EnvServer
from rlmesh.spread import spread_vector_env

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: Env constructor arguments that examples pass through a sandbox (not sandbox options).
EXAMPLE_MAKE_KWARGS = {"render_mode"}


def keywords(*functions: Callable[..., Any]) -> set[str]:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for f in functions for name, p in inspect.signature(f).parameters.items()
            if p.kind in named and name not in ("self", "source")}


SESSION = keywords(SandboxSessionBase.__init__)
ACCEPTED = {
    "SandboxEnv": SESSION | EXAMPLE_MAKE_KWARGS,
    "SandboxVectorEnv": SESSION | keywords(SandboxVectorEnvBase.__init__) | EXAMPLE_MAKE_KWARGS,
    "SandboxModel": set(MODEL_SESSION_OPTIONS) | keywords(SandboxModelBase.__init__),
    "spread_vector_env": (SESSION | keywords(spread_vector_env) | EXAMPLE_MAKE_KWARGS) - {"session_class", "env_class"},
}


def snippets(text: str) -> Iterator[str]:
    """Fenced code blocks (also indented ones in lists) and inline code spans."""
    for match in re.finditer(r"^([ \t]*)```[^\n]*\n(.*?)^\1```", text, re.M | re.S):
        yield textwrap.dedent(match.group(2))
    yield from re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)


def documented_calls() -> list[tuple[str, str, str]]:
    """(page, class, keyword) for each keyword of a sandbox call anywhere in the docs."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for code in snippets(page.read_text()):
            try:
                tree = ast.parse(code)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    found += [(page.name, name, k.arg) for k in node.keywords if name in ACCEPTED and k.arg]
    return found


def test_the_docs_show_sandbox_calls() -> None:  # the extraction itself must keep working
    classes = {name for _, name, _ in documented_calls()}
    assert {"SandboxEnv", "SandboxVectorEnv", "SandboxModel"} <= classes


@pytest.mark.parametrize("page, name, keyword", documented_calls())
def test_keywords_of_documented_sandbox_calls_exist(page: str, name: str, keyword: str) -> None:
    assert keyword in ACCEPTED[name], f"{page} passes {keyword}= to {name}, which has no such option"


def test_parameter_table_of_the_sandboxes_page_lists_real_options() -> None:
    text = (DOCS / "sandboxes.md").read_text()
    table = text.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    names = {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    assert names, "no parameter table found"
    assert names <= SESSION, f"documented but missing: {sorted(names - SESSION)}"


@pytest.mark.parametrize("page", ["sandboxes.md", "serving.md"])
def test_inline_keywords_exist(page: str) -> None:
    text = (DOCS / page).read_text()
    mentioned = set(re.findall(r"`(\w+)=[^`(]*`", text))
    known = SESSION | keywords(EnvServer.__init__)
    assert mentioned <= known, f"{page} mentions keywords that exist nowhere: {sorted(mentioned - known)}"
