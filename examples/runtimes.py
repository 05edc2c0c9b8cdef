"""Which runtime drivers are installed, and which of them can run sandboxes here.

    python examples/runtimes.py
"""

from __future__ import annotations

from rlmesh.errors import RuntimeUnavailableError
from rlmesh.runtime import AUTO_ORDER, get_driver, installed_drivers


def main() -> None:
    print("automatic selection tries", ", ".join(AUTO_ORDER), "then plugins alphabetically")
    for name, entry_point in sorted(installed_drivers().items()):
        try:
            driver = get_driver(name)
        except RuntimeUnavailableError as exc:
            print(f"{name:10} cannot load: {exc}")
            continue
        availability = driver.available()
        if availability:
            kind = "rootless" if availability.rootless else "rootful"
            print(f"{name:10} available: {availability.version} ({kind}) [{entry_point.value}]")
        else:
            print(f"{name:10} unavailable: {availability.reason.splitlines()[0]}")
        driver.close()
    try:
        chosen = get_driver()
    except RuntimeUnavailableError as exc:
        print("no runtime available:", str(exc).splitlines()[0])
    else:
        print("a sandbox created now would use:", chosen.name)
        chosen.close()


if __name__ == "__main__":
    main()
