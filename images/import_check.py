"""Import each module named on the command line; exit 1 naming every one that fails.

Copied into sandbox images and run at build time, so a package that is missing or broken fails
the build with its ImportError in the build log instead of failing later inside a running
sandbox. Standard library only: it runs in the image's venv before anything else is known.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence


def check_imports(names: Sequence[str]) -> list[str]:
    """Import ``names`` in order; print each failure's traceback; return the failed names."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a SystemExit on import is just as broken
            failed.append(name)
            print(f"rlmesh import check: `import {name}` failed:", file=sys.stderr)
            traceback.print_exc()
    return failed


def main(argv: Sequence[str]) -> int:
    failed = check_imports(argv)
    if failed:
        print(
            f"rlmesh import check: cannot import {', '.join(failed)}. Add the package that "
            "provides each module to the sandbox's packages, or fix the import name.",
            file=sys.stderr,
        )
        return 1
    print(f"rlmesh import check: ok ({', '.join(argv) or 'nothing to check'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
