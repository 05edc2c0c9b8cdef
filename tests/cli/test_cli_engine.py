"""CLI commands that need a real container engine: images, sandbox ls/reap, sandboxed serve/eval.

They use the automatically chosen runtime (``$RLMESH_RUNTIME`` or the first available). Without
an engine they are skipped with the reason, except under ``CI``, where they fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rlmesh_images.bootstrap import default_base_image, default_tarball

from rlmesh.errors import RLMeshError
from rlmesh.numpy import RemoteEnv
from rlmesh.runtime import ImageRecipe, RunSpec, RuntimeDriver, get_driver
from rlmesh.runtime.labels import MANAGED, OWNER_PID, OWNER_START, process_start_time

from .conftest import RLMESH, Serving, rlmesh
from .helpers_envs import lean_policy
from .test_cli import assert_failure, local_returns

pytestmark = pytest.mark.engine

TEST_LABEL = "io.rlmesh.test.cli"
RUN_ID = uuid.uuid4().hex[:12]


def _unavailable(reason: str) -> None:
    message = f"no container engine for the CLI engine tests: {reason}\nStart one with `.ci/engines.sh` (as root)."
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def driver() -> Iterator[RuntimeDriver]:
    try:
        chosen = get_driver()
    except RLMeshError as exc:
        _unavailable(str(exc))
    if not chosen.image_exists(default_base_image()):
        _unavailable(f"base image {default_base_image()} missing on {chosen.name}")
    yield chosen
    for leftover in chosen.list({TEST_LABEL: RUN_ID}):
        chosen.remove(leftover.id)
    chosen.close()


def owned_by(driver: RuntimeDriver, pid: int) -> list[str]:
    return [c.id for c in driver.list({MANAGED: "true", OWNER_PID: str(pid)})]


def test_images_bootstrap_imports_a_new_tag_and_lists_it(driver: RuntimeDriver) -> None:
    if not default_tarball().exists():
        pytest.skip(f"no cached rootfs tarball at {default_tarball()} (built by .ci/engines.sh)")
    tag = f"rlmesh-cli-test:{RUN_ID}"
    try:
        result = rlmesh("images", "bootstrap", "--runtime", driver.name, "--tag", tag,
                        "--tarball", str(default_tarball()), timeout=300)
        assert result.returncode == 0, result.stderr
        assert tag in result.stdout
        assert driver.image_exists(tag)
        again = rlmesh("images", "bootstrap", "--runtime", driver.name, "--tag", tag)
        assert again.returncode == 0 and "already has" in again.stderr  # nothing rebuilt
        listed = rlmesh("images", "list", "--runtime", driver.name, env={"RLMESH_BASE_IMAGE": tag})
        assert listed.returncode == 0 and tag in listed.stdout and "missing" not in listed.stdout
    finally:
        driver.remove_image(tag)


def test_images_list_flags_a_missing_base_image(driver: RuntimeDriver) -> None:
    result = rlmesh("images", "list", "--runtime", driver.name, env={"RLMESH_BASE_IMAGE": "rlmesh-missing:none"})
    assert result.returncode == 0
    assert "missing" in result.stdout and "rlmesh images bootstrap" in result.stdout


def test_images_prune_declined_removes_nothing(driver: RuntimeDriver) -> None:
    # A managed image of our own, so there is always something the prune could take.
    recipe = ImageRecipe(f"FROM {default_base_image()}\n", repository="rlmesh-cli-test",
                         labels={MANAGED: "true", TEST_LABEL: RUN_ID})
    tag = driver.build(recipe)
    try:
        before = driver.list_images({MANAGED: "true"})
        assert tag in before
        assert RLMESH is not None
        result = subprocess.run([RLMESH, "images", "prune", "--runtime", driver.name], input="n\n",
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "Aborted" in result.stderr
        assert driver.list_images({MANAGED: "true"}) == before
    finally:
        driver.remove_image(tag)


def test_sandbox_ls_and_reap_remove_only_orphans(driver: RuntimeDriver) -> None:
    # The owner is alive until just before the reap: every rlmesh session on this host reaps
    # orphans, so an orphan made earlier could be taken by a concurrent test run instead.
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    sleeper = ["sleep", "300"]
    try:
        orphan = driver.run(RunSpec(image=default_base_image(), command=sleeper, labels={
            TEST_LABEL: RUN_ID, OWNER_PID: str(owner.pid), OWNER_START: process_start_time(owner.pid) or ""}))
    finally:
        owner.kill()
    alive = driver.run(RunSpec(image=default_base_image(), command=sleeper, labels={TEST_LABEL: RUN_ID}))
    try:
        owner.wait()  # now the first container's owner is gone
        listed = rlmesh("sandbox", "ls", "--runtime", driver.name, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["id"]: row for row in json.loads(listed.stdout)}
        assert rows[orphan.id[:12]]["orphan"] is True
        assert rows[alive.id[:12]]["orphan"] is False
        assert rows[alive.id[:12]]["owner"].startswith(f"{os.getpid()}@")

        reaped = rlmesh("sandbox", "reap", "--runtime", driver.name)
        assert reaped.returncode == 0, reaped.stderr
        assert f"removed {orphan.id[:12]}" in reaped.stdout
        remaining = {c.id for c in driver.list({TEST_LABEL: RUN_ID})}
        assert orphan.id not in remaining and alive.id in remaining
    finally:
        driver.stop(alive.id, timeout=0)
        driver.stop(orphan.id, timeout=0)


def test_eval_a_sandbox_source_matches_local(driver: RuntimeDriver) -> None:
    assert RLMESH is not None
    # A plain id runs in-process unless --sandbox asks for a container.
    proc = subprocess.Popen([RLMESH, "eval", "CartPole-v1", "--sandbox", "--runtime", driver.name, "-e", "3",
                             "--seed", "4", "--policy", "helpers_envs.py:lean_policy", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    returns = [episode["return"] for episode in json.loads(out)["episodes"]]
    assert returns == local_returns(lean_policy, 3, 4)
    assert owned_by(driver, proc.pid) == []


def test_serve_a_sandbox_relays_it_and_removes_the_container(driver: RuntimeDriver,
                                                             serving: list[Serving]) -> None:
    server = Serving(["gym://CartPole-v1", "--runtime", driver.name, "--address", "tcp://127.0.0.1:0",
                      "--", "max_episode_steps=5"], ready_timeout=600)
    serving.append(server)
    assert "Serving sandbox gym://CartPole-v1" in server.banner
    assert len(owned_by(driver, server.proc.pid)) == 1
    with RemoteEnv(server.address) as env:
        env.reset(seed=0)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(0)
            steps += 1
            done = terminated or truncated
        assert steps <= 5  # the make kwarg reached gymnasium.make inside the container
    assert server.stop(signal.SIGTERM) == 0  # what a job scheduler or `docker stop` sends
    assert owned_by(driver, server.proc.pid) == []


@pytest.mark.parametrize(("how", "message"), [
    ("exit", "the sandbox container exited"),  # the server process in it died
    ("remove", "the sandbox container is gone"),  # `docker rm -f` from outside
])
def test_serve_a_sandbox_exits_1_when_its_container_dies(driver: RuntimeDriver, serving: list[Serving],
                                                        how: str, message: str) -> None:
    server = Serving(["gym://CartPole-v1", "--runtime", driver.name, "--address", "tcp://127.0.0.1:0"],
                     ready_timeout=600)
    serving.append(server)
    (container,) = owned_by(driver, server.proc.pid)
    if how == "exit":
        driver.client.containers.get(container).kill()  # type: ignore[attr-defined]  # docker or podman SDK
    else:
        driver.stop(container, timeout=0)
    try:
        assert server.proc.wait(30) == 1
    except subprocess.TimeoutExpired:
        raise AssertionError("rlmesh serve kept running after its sandbox container died") from None
    assert server.proc.stderr is not None
    assert message in server.proc.stderr.read()
    assert owned_by(driver, server.proc.pid) == []


def test_sandbox_refusals_happen_before_any_build(driver: RuntimeDriver) -> None:
    result = rlmesh("serve", "gym://CartPole-v1", "--runtime", driver.name, "--package", "gymnasium; rm -rf /")
    assert_failure(result)
    assert "gymnasium; rm -rf /" in result.stderr
    assert "plain pip requirements" in result.stderr


def test_images_build_then_eval_the_prebuilt_image(driver: RuntimeDriver) -> None:
    name = f"rlmesh-test-cli-{RUN_ID}:cartpole"
    refused = rlmesh("images", "build", "CartPole-v1", "--tag", name, "--system-package", "curl; rm -rf /")
    assert_failure(refused, "not a Debian package name")
    try:
        built = rlmesh("images", "build", "CartPole-v1", "--tag", name, "--runtime", driver.name,
                       "-p", "gymnasium[classic-control]==1.3.0", timeout=900)
        assert built.returncode == 0, built.stderr
        assert f"image://{name}" in built.stdout
        evaluated = rlmesh("eval", f"image://{name}", "--runtime", driver.name, "-e", "2", "--seed", "4",
                           "--policy", "helpers_envs.py:lean_policy", "--json", timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr
        assert "Building" not in evaluated.stderr  # nothing was built
        returns = [episode["return"] for episode in json.loads(evaluated.stdout)["episodes"]]
        assert returns == local_returns(lean_policy, 2, 4)
    finally:
        driver.remove_image(name)
