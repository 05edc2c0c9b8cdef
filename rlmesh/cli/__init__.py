"""The ``rlmesh`` command: serve and evaluate envs, inspect runtimes, manage images and sandboxes.

Exit codes: 0 success, 1 failure (one readable line plus a hint; ``--verbose`` adds the
traceback), 2 usage error, 130 interrupted.

One module per command group, on top of small shared modules:

- :mod:`~rlmesh.cli.root`: the root group ``cli``, error handling, and :func:`main`;
- :mod:`~rlmesh.cli.serve`, :mod:`~rlmesh.cli.evaluate` (``eval``), :mod:`~rlmesh.cli.runtimes`,
  :mod:`~rlmesh.cli.doctor`, :mod:`~rlmesh.cli.images`, :mod:`~rlmesh.cli.sandbox`: the commands;
- :mod:`~rlmesh.cli.targets`: how ``serve`` and ``eval`` read their target (address, factory,
  Gymnasium id, sandbox source), the sandbox options, and the env each target gives;
- :mod:`~rlmesh.cli.loading`: user code named as ``module:attr`` or ``file.py:attr``;
- :mod:`~rlmesh.cli.drivers`: ``--runtime``/``--host`` and probing the runtime drivers;
- :mod:`~rlmesh.cli.errors` and :mod:`~rlmesh.cli.output`: failures and printing.

Heavy or optional parts (NumPy, Gymnasium, the runtimes, sandboxes) are imported inside the
commands that use them, so ``rlmesh --help`` stays fast.
"""

from __future__ import annotations

from rlmesh.cli.doctor import OPTIONAL, Check
from rlmesh.cli.errors import EXIT_INTERRUPTED, CommandError
from rlmesh.cli.loading import load_callable
from rlmesh.cli.root import cli, main
from rlmesh.cli.targets import is_address, parse_make_kwargs

__all__ = [
    "EXIT_INTERRUPTED",
    "OPTIONAL",
    "Check",
    "CommandError",
    "cli",
    "is_address",
    "load_callable",
    "main",
    "parse_make_kwargs",
]
