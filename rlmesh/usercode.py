"""Load user code from a file: an env factory, a policy, a command-line target.

The one place that runs a user's ``.py`` file as a module, so every caller gets the same rules:
the file's folder goes on ``sys.path`` (it may import its sibling modules) and a file that
cannot be loaded raises ``ImportError`` naming it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load_module_file"]


def load_module_file(path: str | Path, module_name: str) -> ModuleType:
    """Run the Python file ``path`` as a module called ``module_name`` and return it."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"cannot load {path}: not a readable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module
