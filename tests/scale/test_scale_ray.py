"""Lanes on a real two-node Ray cluster (loopback) through the ray runtime driver.

The session's cluster has a head on 127.0.0.3 and a second node on 127.0.0.2 (see conftest);
endpoints are placed round-robin over both, so every test here crosses nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from scale_compare import assert_equal

import rlmesh
from rlmesh.errors import AuthenticationError, ContainerError, RuntimeDriverError
from rlmesh.protocol.keys import SessionKeys
from rlmesh.runtime import ImageRecipe, RunSpec, reap_orphans
from rlmesh.runtime.labels import OWNER_PID, OWNER_START, SESSION
from rlmesh.sandbox.entry import CONFIG_VARIABLE

try:
    import ray  # noqa: F401  (only whether it imports matters here)
except ImportError:
    if os.environ.get("CI"):
        raise  # CI must run the Ray tests: ray[default] belongs to what it installs
    pytest.skip('the Ray tests need ray: pip install "ray[default]>=2.9"', allow_module_level=True)

from rlmesh_runtimes.ray import NAMESPACE, RayDriver  # noqa: E402

from rlmesh.numpy import RemoteVectorEnv, spread_vector_env  # noqa: E402

# The checkout's rlmesh runs on the cluster's nodes as is: naming its version skips the wheel
# build a container sandbox of an unreleased checkout would need.
SANDBOX = {"rlmesh_package": f"rlmesh=={rlmesh.__version__}", "owner_timeout": 10.0}


@pytest.fixture
def driver(ray_cluster: Any) -> Iterator[RayDriver]:
    driver = RayDriver(address=ray_cluster.address)
    yield driver
    leftovers = driver.list({})
    for info in leftovers:
        driver.stop(info.id, timeout=0)
    assert not leftovers, f"actors left running: {[i.id for i in leftovers]}"


def _host(address: str) -> str:
    return address.removeprefix("tcp://").rsplit(":", 1)[0]


def _pid_running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_running(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _pid_running(p)]


def _actor_folders() -> set[Path]:
    """The actors' private folders (app files, keys) on this machine, which hosts both nodes."""
    return set(Path(tempfile.gettempdir()).glob("rlmesh-actor-*"))


def test_available_and_nodes_stay_on_loopback(driver: RayDriver, ray_cluster: Any) -> None:
    availability = driver.available()
    assert availability, availability.reason
    assert "2 nodes" in availability.version
    assert [ip for _, ip in driver.nodes()] == ["127.0.0.2", "127.0.0.3"]


def test_available_explains_a_missing_cluster() -> None:
    # A fresh process: not connected to any cluster and no address given.
    code = ("from rlmesh_runtimes.ray import RayDriver; a = RayDriver().available(); "
            "print(a.ok); print(a.reason)")
    env = {k: v for k, v in os.environ.items() if k != "RLMESH_RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    ok, reason = done.stdout.splitlines()[:2]
    assert ok == "False"
    assert "RLMESH_RAY_ADDRESS" in reason and "ray start --head" in reason


def test_lanes_on_both_nodes_equal_one_local_vector_env(driver: RayDriver) -> None:
    before = _actor_folders()
    env = spread_vector_env("CartPole-v1", 10, per_endpoint=3, runtime=driver, **SANDBOX)
    assert len(_actor_folders() - before) == 4  # one per endpoint, with its keys
    local = gym.make_vec("CartPole-v1", num_envs=10, vectorization_mode="sync")
    try:
        assert env.num_envs == 10
        assert list(map(len, env.endpoint_lanes.values())) == [3, 3, 3, 1]
        hosts = [_host(a) for a in env.endpoints]
        assert set(hosts) == {"127.0.0.2", "127.0.0.3"}, hosts
        assert env.single_observation_space == local.single_observation_space
        assert_equal(env.reset(seed=11), local.reset(seed=11))
        rng = np.random.default_rng(0)
        endings = 0
        for _ in range(120):
            actions = rng.integers(0, 2, 10)
            got, want = env.step(actions), local.step(actions)
            assert_equal(got, want)
            endings += int((want[2] | want[3]).sum())
        assert endings >= 10  # the comparison went through autoresets on every node
        # Each endpoint is keyed: a keyless peer on the cluster network gets no session.
        with pytest.raises(AuthenticationError, match="requires keys"):
            RemoteVectorEnv(env.endpoints[0], connect_timeout=5)
    finally:
        local.close()
        env.close()
    assert driver.list({}) == []
    assert _actor_folders() - before == set()


def test_an_endpoint_killed_mid_run_is_named_and_nothing_is_left(driver: RayDriver) -> None:
    before = _actor_folders()
    env = spread_vector_env("CartPole-v1", 6, per_endpoint=2, runtime=driver, **SANDBOX)
    sessions = env._owned
    pids = [driver.pid(s.container_id) for s in sessions]
    try:
        env.reset(seed=0)
        env.step(np.zeros(6, dtype=np.int64))
        victim = sessions[1]
        os.kill(driver.pid(victim.container_id), signal.SIGKILL)  # the node loses that worker
        started = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            for _ in range(100):
                env.step(np.zeros(6, dtype=np.int64))
        assert victim.address in str(caught.value) and "lanes 2-3" in str(caught.value)
        assert time.monotonic() - started < 15
    finally:
        env.close()
    assert driver.list({}) == []
    assert _wait_gone(pids) == [], "actor worker processes survived close()"
    # The killed worker could not remove its folder (and keys); the next actor on the node does.
    assert len(_actor_folders() - before) == 1
    spread_vector_env("CartPole-v1", 2, per_endpoint=1, runtime=driver, **SANDBOX).close()
    assert _actor_folders() - before == set()


def test_orphans_of_a_dead_owner_are_reaped(driver: RayDriver, tmp_path: Path) -> None:
    keys = SessionKeys.new(tmp_path)  # a sandbox server starts only with the keys it is handed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    recipe = ImageRecipe("FROM scratch\n", packages=(), labels={"io.rlmesh.managed": "true"})
    tag = driver.build(recipe)
    config = {"source": {"kind": "gym", "env_id": "CartPole-v1"}, "vector": False, "port": 5555,
              "owner_timeout": 60.0}
    handle = driver.run(RunSpec(image=tag, command=["python", "-m", "rlmesh.sandbox.entry"],
                                env={CONFIG_VARIABLE: json.dumps(config)}, ports=[5555],
                                labels={OWNER_PID: str(dead.pid), OWNER_START: "1", SESSION: "orphan"},
                                secret_files=keys.server_files))
    assert _host(handle.addresses[5555]) in ("127.0.0.2", "127.0.0.3")
    assert driver.health(handle.id).running
    assert [i.id for i in driver.list({SESSION: "orphan"})] == [handle.id]
    assert reap_orphans(driver) == [handle.id]
    assert driver.list({SESSION: "orphan"}) == []


def test_a_failing_start_reports_the_actor_error(driver: RayDriver) -> None:
    # The tag covers the Dockerfile only, which names the import check for generated recipes.
    recipe = ImageRecipe("FROM scratch\nRUN import-check no_such_module_here\n", packages=(),
                         imports=("no_such_module_here",))
    tag = driver.build(recipe)
    config = {"source": {"kind": "gym", "env_id": "CartPole-v1"}, "port": 5555}
    before = _actor_folders()
    with pytest.raises(ContainerError, match="no_such_module_here"):
        driver.run(RunSpec(image=tag, command=["python", "-m", "rlmesh.sandbox.entry"],
                           env={CONFIG_VARIABLE: json.dumps(config)}, ports=[5555]))
    assert driver.list({}) == []
    assert _actor_folders() - before == set()


def test_refusals_name_the_fix(driver: RayDriver) -> None:
    with pytest.raises(RuntimeDriverError, match="only a Dockerfile"):
        driver.build(ImageRecipe("FROM x\n"))
    with pytest.raises(RuntimeDriverError, match="no container images"):
        driver.import_image("/tmp/x.tar", "x:y")
    tag = driver.build(ImageRecipe("FROM scratch\n", packages=()))
    base = {"image": tag, "command": ["python", "-m", "rlmesh.sandbox.entry"],
            "env": {CONFIG_VARIABLE: "{}"}, "ports": [5555]}
    with pytest.raises(RuntimeDriverError, match="never enforces"):
        driver.run(RunSpec(**base, memory="1g"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeDriverError, match="sandbox server"):
        driver.run(RunSpec(**{**base, "command": ["sh"]}))  # type: ignore[arg-type]
    with pytest.raises(RuntimeDriverError, match="gpus"):
        driver.run(RunSpec(**base, gpus=True))  # type: ignore[arg-type]
    with pytest.raises(RuntimeDriverError, match="shm_size"):
        driver.run(RunSpec(**base, shm_size="1g"))  # type: ignore[arg-type]


def test_packages_the_cluster_has_are_not_reinstalled(driver: RayDriver) -> None:
    from importlib.metadata import version

    recipe = ImageRecipe("FROM scratch\n", packages=(f"gymnasium=={version('gymnasium')}",
                                                      "numpy>=1.0", "some-package-nobody-has==1.0",
                                                      "gymnasium==0.0.1"))
    spec = RunSpec(image=recipe.tag, env={"A": "1"})
    runtime_env = driver._runtime_env(recipe, spec)
    assert runtime_env == {"env_vars": {"A": "1"},
                           "pip": ["some-package-nobody-has==1.0", "gymnasium==0.0.1"]}
    assert NAMESPACE == "rlmesh"


def test_same_step_autoreset_and_a_local_source_with_its_files(driver: RayDriver, tmp_path: Path) -> None:
    source = tmp_path / "pole"
    source.mkdir()
    (source / "helper.py").write_text("ENV_ID = 'CartPole-v1'\n")
    (source / "env.py").write_text(
        "import gymnasium as gym\nfrom helper import ENV_ID\n\n"
        "def make_env():\n    return gym.make(ENV_ID)\n")
    env = spread_vector_env(str(source), 4, per_endpoint=2, runtime=driver, **SANDBOX)
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4)
    try:
        assert {_host(a) for a in env.endpoints} == {"127.0.0.2", "127.0.0.3"}
        assert_equal(env.reset(seed=3), local.reset(seed=3))
        for step in range(60):
            actions = np.array([step % 2, 1, 0, (step // 3) % 2])
            assert_equal(env.step(actions), local.step(actions))
    finally:
        env.close()
        local.close()

    same_step = spread_vector_env("CartPole-v1", 4, per_endpoint=2, runtime=driver,
                                  autoreset_mode="SameStep", **SANDBOX)
    local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync",
                         vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    try:
        assert same_step.autoreset_mode == "SameStep"
        assert_equal(same_step.reset(seed=8), local.reset(seed=8))
        finals = 0
        for _ in range(80):
            actions = np.ones(4, dtype=np.int64)
            got, want = same_step.step(actions), local.step(actions)
            assert_equal(got, want)
            finals += int("final_obs" in want[4])
        assert finals > 0
    finally:
        same_step.close()
        local.close()


def test_packages_come_from_an_isolated_runtime_environment(driver: RayDriver, tmp_path: Path) -> None:
    # inflection is not installed here: only the actor's runtime environment has it.
    with pytest.raises(ImportError):
        __import__("inflection")
    recipe = ImageRecipe("FROM scratch\nRUN pip install inflection==0.5.1\n",
                         packages=("inflection==0.5.1",), imports=("inflection",))
    tag = driver.build(recipe)
    config = {"source": {"kind": "gym", "env_id": "CartPole-v1"}, "port": 5555, "owner_timeout": 30.0}
    keys = SessionKeys.new(tmp_path)
    handle = driver.run(RunSpec(image=tag, command=["python", "-m", "rlmesh.sandbox.entry"],
                                env={CONFIG_VARIABLE: json.dumps(config)}, ports=[5555],
                                secret_files=keys.server_files))
    try:
        assert driver.health(handle.id).running  # the import check passed inside the actor
        with rlmesh.RemoteEnv(handle.addresses[5555], server_key=keys.server_key,
                              client_key=keys.client_key) as env:
            env.reset(seed=0)
    finally:
        driver.stop(handle.id)
    with pytest.raises(ImportError):
        __import__("inflection")
