"""User code named on the command line: ``module:attr`` or ``path/to/file.py:attr``.

Used for env factories (``serve``/``eval`` targets) and policies (``eval --policy``).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rlmesh.cli.errors import CommandError
from rlmesh.usercode import load_module_file

__all__ = ["FACTORY", "load_callable"]

#: ``module:attr`` or ``file.py:attr`` (``attr`` may be dotted: ``module:Class.make``).
FACTORY = re.compile(r"^(?P<module>[^:]+\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")


def load_callable(path: str, what: str) -> Callable[..., Any]:
    """Load ``module:attr`` or ``file.py:attr``; raises :class:`CommandError` with the fix."""
    match = FACTORY.match(path)
    if not match:
        raise click.BadParameter(f"{path!r} is not 'module:name' or 'file.py:name'", param_hint=what)
    module_name, attr = match["module"], match["attr"]
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).resolve()
            if not file.is_file():
                raise CommandError(f"cannot load {what} {path!r}: no file {file}",
                                   "give a path to an existing .py file")
            module = load_module_file(file, file.stem)
        else:
            sys.path.insert(0, os.getcwd())  # like `python -m`, find modules in the cwd
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r} for {what} {path!r}: {exc}",
                           "check the module name and that its package is installed") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CommandError(f"{module_name!r} has no attribute {attr!r} ({what} {path!r})",
                               "check the name after the ':'")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"{what} {path!r} is not callable", "point at a function or class")
    result: Callable[..., Any] = target
    return result
