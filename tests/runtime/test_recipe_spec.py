"""Unit tests of the engine-neutral recipe type shared by every driver."""

from __future__ import annotations

import pytest

from rlmesh.errors import RuntimeDriverError
from rlmesh.runtime import ImageRecipe


def test_tag_depends_on_every_input() -> None:
    base = ImageRecipe("FROM x\n", {"a.py": b"1"})
    assert base.tag == ImageRecipe("FROM x\n", {"a.py": b"1"}).tag
    assert base.tag.startswith("rlmesh-sandbox:")
    assert base.tag != ImageRecipe("FROM y\n", {"a.py": b"1"}).tag
    assert base.tag != ImageRecipe("FROM x\n", {"a.py": b"2"}).tag
    assert base.tag != ImageRecipe("FROM x\n", {"b.py": b"1"}).tag


@pytest.mark.parametrize("name", ["../escape.py", "/etc/passwd", "a/../../b", "Dockerfile", ""])
def test_context_file_names_cannot_escape_the_context(name: str) -> None:
    with pytest.raises(RuntimeDriverError, match="build-context file name"):
        ImageRecipe("FROM x\n", {name: b""})


def test_nested_context_files_are_fine() -> None:
    assert ImageRecipe("FROM x\n", {"pkg/mod.py": b""}).context_files
