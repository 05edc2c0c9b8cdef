"""A third-party driver distribution, pip-installed into a venv, is found through the entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

PLUGIN_DIST = Path(__file__).resolve().parent.parent / "plugin_dist"

PROBE = textwrap.dedent(
    """
    import json
    from rlmesh.runtime import RunSpec, get_driver, installed_drivers
    installed = installed_drivers()
    driver = get_driver("fake-echo", flavour="test")
    handle = driver.run(RunSpec("any-image", ports=[7000]))
    print(json.dumps({
        "installed": sorted(installed),
        "value": installed["fake-echo"].value,
        "dist": installed["fake-echo"].dist.name,
        "class": type(driver).__name__,
        "options": driver.options,
        "available": bool(driver.available()),
        "address": handle.addresses[7000],
        "listed": [c.id for c in driver.list({"io.rlmesh.managed": "true"})],
    }))
    """
)


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.timeout(300)
def test_plugin_installed_in_venv_is_discovered(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # A bare venv of the interpreter running the tests. The test environment's site-packages are
    # added by a .pth file, so rlmesh, pip and setuptools come from what the test run installed
    # (never from the machine's base interpreter), while the plugin lands in this venv alone.
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    venv_site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
    ours = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))
    Path(venv_site, "test-environment.pth").write_text("\n".join(ours) + "\n")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = shutil.copytree(PLUGIN_DIST, tmp_path / "plugin_dist")
    run(
        python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
        "--no-build-isolation", str(source),
    )
    assert list(Path(venv_site).glob("rlmesh_fake_echo*")), "the plugin must land in the new venv"

    found = json.loads(run(python, "-c", PROBE).strip().splitlines()[-1])

    assert {"fake-echo", "docker", "podman", "cli"} <= set(found["installed"])
    assert found["value"] == "rlmesh_fake_echo:FakeEchoDriver"
    assert found["dist"] == "rlmesh-fake-echo"
    assert found["class"] == "FakeEchoDriver"
    assert found["options"] == {"flavour": "test"}
    assert found["available"] is True
    assert found["address"] == "tcp://127.0.0.1:47000"
    assert found["listed"] == ["fake1"]


def test_plugin_is_not_visible_outside_its_venv() -> None:
    from rlmesh.runtime import installed_drivers

    assert "fake-echo" not in installed_drivers()
