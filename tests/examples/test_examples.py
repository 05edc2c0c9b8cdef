"""Every script in ``examples/`` runs to completion as its own process.

Scripts marked ``# rlmesh-example: needs-engine`` start sandboxes: without a container engine
and base image they are skipped with the reason, except under ``CI``, where they must run.
After each of them, no container owned by the script's process may remain.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENGINE_MARK = "# rlmesh-example: needs-engine"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def needs_engine(script: Path) -> bool:
    return ENGINE_MARK in script.read_text()


def engine_problem() -> str:
    """Why sandboxes cannot run here, or "" when they can."""
    from rlmesh_images.bootstrap import default_base_image

    from rlmesh.errors import RLMeshError
    from rlmesh.runtime import get_driver

    try:
        driver = get_driver()
    except RLMeshError as exc:
        return str(exc)
    try:
        if not driver.image_exists(default_base_image()):
            return f"base image {default_base_image()} is missing on {driver.name} (rlmesh images bootstrap)"
    finally:
        driver.close()
    return ""


def owned_containers(pid: int) -> list[str]:
    from rlmesh.runtime import get_driver
    from rlmesh.runtime.labels import MANAGED, OWNER_PID

    driver = get_driver()
    try:
        return [c.id for c in driver.list({MANAGED: "true", OWNER_PID: str(pid)})]
    finally:
        driver.close()


def test_examples_exist() -> None:
    assert len(SCRIPTS) >= 8, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    engine = needs_engine(script)
    if engine:
        problem = engine_problem()
        if problem:
            message = (f"{script.name} needs a container engine: {problem}\n"
                       "Start one with `.ci/engines.sh` (as root) to run the sandbox examples.")
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
    # Run from an unrelated directory: examples must not depend on the caller's cwd.
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=600 if engine else 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{script.name} timed out:\n{output[-4000:]}")
    assert proc.returncode == 0, f"{script.name} exited with {proc.returncode}:\n{output[-4000:]}"
    assert output.strip(), f"{script.name} printed nothing"
    if engine:
        assert owned_containers(proc.pid) == [], f"{script.name} left containers behind"
