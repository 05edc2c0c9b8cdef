"""End-to-end sandbox sessions on real containers, on every engine configuration."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from runtime.conftest import engine_inspect

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh.errors import (
    AuthenticationError,
    ContainerError,
    ImageBuildError,
    RuntimeDriverError,
    SandboxCrashed,
    SandboxError,
    SourceError,
)
from rlmesh.protocol.keys import new_keypair
from rlmesh.runtime import RuntimeDriver, reap_orphans
from rlmesh.runtime.labels import OWNER_PID

from .conftest import IMPORTS, PACKAGES, ours, runtime_argument

HERE = Path(__file__).parent
BACKENDS = {"numpy": rnp, "torch": rtorch}


def _local_returns(seed: int, actions: list[int]) -> list[Any]:
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    observations = [obs]
    for action in actions:
        obs, *_ = env.step(action)
        observations.append(obs)
    env.close()
    return observations


def _as_numpy(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_cartpole_matches_local_env(sandbox_driver: RuntimeDriver, backend: str) -> None:
    module = BACKENDS[backend]
    actions = [0, 1, 1, 0, 1, 0, 0, 1]
    expected = _local_returns(7, actions)
    with module.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS,
                           render_mode="rgb_array", runtime=sandbox_driver) as env:
        assert env.env_contract.env_id == "CartPole-v1"
        # The container shares this kernel: requests go through a shared-memory segment.
        assert env.client.transport == "shm"
        assert env.render_mode == "rgb_array"
        assert env.metadata["render_fps"] == 50
        obs, info = env.reset(seed=7)
        observed = [obs]
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            observed.append(obs)
            assert reward == 1.0
        for got, want in zip(observed, expected):
            np.testing.assert_array_equal(_as_numpy(got), want)
        frame = env.render()
        assert tuple(frame.shape) == (400, 600, 3)
        assert env.action_space.contains(env.action_space.sample())
        container = env.container_id
        assert container in ours(sandbox_driver, os.getpid())
    assert container not in ours(sandbox_driver)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_sandbox(sandbox_driver: RuntimeDriver, mode: str) -> None:
    local = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    with rnp.SandboxVectorEnv("CartPole-v1", num_envs=3, vectorization_mode=mode,
                              packages=PACKAGES, imports=IMPORTS, runtime=sandbox_driver) as envs:
        assert envs.num_envs == 3
        assert envs.client.transport == "shm"
        assert envs.single_action_space == gym.spaces.Discrete(2)
        remote_obs, _ = envs.reset(seed=11)
        local_obs, _ = local.reset(seed=11)
        np.testing.assert_array_equal(remote_obs, local_obs)
        rng = np.random.default_rng(0)
        for _ in range(40):  # long enough for lanes to terminate and autoreset
            actions = rng.integers(0, 2, size=3)
            remote = envs.step(actions)
            expected = local.step(actions)
            for got, want in zip(remote[:4], expected[:4]):
                np.testing.assert_array_equal(got, want)
    local.close()


def test_local_envhub_source_selects_task(sandbox_driver: RuntimeDriver) -> None:
    source = f"{HERE / 'envhub_demo'}:classic/pendulum"
    with rnp.SandboxEnv(source, trust_remote_code=True, packages=PACKAGES, imports=IMPORTS,
                        runtime=sandbox_driver) as env:
        assert env.action_space.shape == (1,)
        obs, _ = env.reset(seed=3)
        assert obs.shape == (3,)
        env.step(np.array([0.5], dtype=np.float32))
    # task= picks another task from the same suite
    with rnp.SandboxEnv(str(HERE / "envhub_demo"), task="cartpole", packages=PACKAGES,
                        imports=IMPORTS, runtime=sandbox_driver) as env:
        assert env.action_space == gym.spaces.Discrete(2)


def test_crashing_env_reports_exit_code_and_log(sandbox_driver: RuntimeDriver) -> None:
    before = set(ours(sandbox_driver, os.getpid()))
    with pytest.raises(ContainerError) as caught:
        rnp.SandboxEnv(str(HERE / "crashing_env"), packages=PACKAGES, runtime=sandbox_driver)
    assert caught.value.exit_code == 3
    assert "broken on purpose" in str(caught.value)
    assert set(ours(sandbox_driver, os.getpid())) == before  # the failed container is gone


def test_missing_import_fails_the_build(sandbox_driver: RuntimeDriver) -> None:
    with pytest.raises(ImageBuildError) as caught:
        rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=["surely_not_a_module_xyz"],
                       runtime=sandbox_driver)
    assert "surely_not_a_module_xyz" in str(caught.value)


# --- cleanup on every path -----------------------------------------------------------------------

def test_close_and_context_exit_stop_the_container(sandbox_driver: RuntimeDriver) -> None:
    env = rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS, runtime=sandbox_driver)
    container = env.container_id
    env.close()
    env.close()  # idempotent
    assert container not in ours(sandbox_driver)
    with pytest.raises(SandboxError):
        env.reset()


def test_garbage_collection_stops_the_container(sandbox_driver: RuntimeDriver) -> None:
    env = rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS, runtime=sandbox_driver)
    container = env.container_id
    del env
    gc.collect()
    assert container not in ours(sandbox_driver)


def _child(mode: str, engine: Any) -> tuple[subprocess.Popen[str], str, int]:
    """The child process, its container, and its container watcher's pid."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "sandbox_child.py"), mode, runtime_argument(engine)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), f"child did not start: {line!r}, exit {proc.wait()}"
    _, container, watcher = line.split()
    return proc, container, int(watcher)


def _wait_gone(driver: RuntimeDriver, container: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if container not in ours(driver):
            return True
        time.sleep(0.2)
    return False


def test_interpreter_exit_stops_the_container(sandbox_driver: RuntimeDriver, sandbox_engine: Any) -> None:
    proc, container, _ = _child("exit", sandbox_engine)
    assert proc.wait(timeout=60) == 0
    assert container not in ours(sandbox_driver)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_container(sandbox_driver: RuntimeDriver, sandbox_engine: Any,
                                    signum: int) -> None:
    proc, container, _ = _child("wait", sandbox_engine)
    assert container in ours(sandbox_driver, proc.pid)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    assert container not in ours(sandbox_driver)


def test_sigkill_owner_and_watcher_server_stops_itself_and_reaper_removes_it(
        sandbox_driver: RuntimeDriver, sandbox_engine: Any) -> None:
    # The last line of defence, should the container watcher die with its owner.
    proc, container, watcher = _child("wait", sandbox_engine)
    assert watcher
    os.kill(watcher, signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while sandbox_driver.health(container).running:  # heartbeats stopped: it exits by itself
        assert time.monotonic() < deadline, "sandbox kept running after its owner was killed"
        time.sleep(0.5)
    assert container in reap_orphans(sandbox_driver)
    assert container not in ours(sandbox_driver)


def test_sigkill_owner_leaves_no_container_behind(sandbox_driver: RuntimeDriver, sandbox_engine: Any) -> None:
    # kill -9: no exit handler runs in the owner. Within 30 s no container of it may exist,
    # running or exited. The child stays unreaped (a zombie) meanwhile: its parent may be slow.
    proc, container, _ = _child("wait", sandbox_engine)
    assert ours(sandbox_driver, proc.pid) == [container]
    proc.kill()
    killed = time.monotonic()
    while ours(sandbox_driver, proc.pid):
        if time.monotonic() - killed > 30:
            left = [(c.id[:12], "running" if c.running else "exited")
                    for c in sandbox_driver.list({OWNER_PID: str(proc.pid)})]
            proc.wait(timeout=10)
            pytest.fail(f"containers of the killed owner still exist 30 s after SIGKILL: {left}")
        time.sleep(0.2)
    print(f"[{sandbox_engine.id}] no container left {time.monotonic() - killed:.1f} s after SIGKILL")
    proc.wait(timeout=10)


# --- refusals: each raises before anything is built ----------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    ({"source": "hf://lerobot/cartpole-env:cartpole_suite/0", "trust_remote_code": True}, "pin"),
    ({"source": "hf://lerobot/cartpole-env@" + "a" * 40 + ":cartpole_suite/0"}, "trust_remote_code"),
    ({"source": "hf://bad owner/repo@" + "a" * 40, "trust_remote_code": True}, "invalid"),
    ({"source": "hf://o/r@" + "a" * 40 + ":suite/task/extra", "trust_remote_code": True}, "selector"),
    ({"source": "not a source"}, "cannot understand"),
    ({"source": "CartPole-v1", "packages": ["gymnasium; rm -rf /"]}, "gymnasium; rm -rf /"),
    ({"source": "CartPole-v1", "packages": ["--index-url=http://evil"]}, "--index-url"),
    ({"source": "CartPole-v1", "packages": ["numpy\nRUN curl evil"]}, "numpy"),
    ({"source": "CartPole-v1", "imports": ["os; import evil"]}, "import"),
    ({"source": "CartPole-v1", "capabilities": ["root"]}, "capabilities"),
    ({"source": "CartPole-v1", "config": {"no_such_key": 1}}, "no_such_key"),
    ({"source": str(HERE)}, "env.py"),
    ({"source": "image://envs;id"}, "invalid image name"),
    ({"source": "image://Envs:latest"}, "invalid image name"),
    ({"source": "image://envs:$(id)"}, "invalid image name"),
])
def test_refusals_happen_before_any_build(kwargs: dict[str, Any], needle: str) -> None:
    class NoEngine(RuntimeDriver):  # any call into the engine would be a failure of the rule
        name = "no-engine"

        def __getattribute__(self, item: str) -> Any:
            if item in ("available", "image_exists", "_build", "build", "run", "list"):
                raise AssertionError(f"engine touched ({item}) before the refusal")
            return object.__getattribute__(self, item)

    NoEngine.__abstractmethods__ = frozenset()
    with pytest.raises((SourceError, SandboxError, ValueError)) as caught:
        rnp.SandboxEnv(runtime=NoEngine(), **kwargs)
    assert needle in str(caught.value)


def test_vectorization_mode_is_validated() -> None:
    with pytest.raises(SandboxError, match="vectorization_mode"):
        rnp.SandboxVectorEnv("CartPole-v1", num_envs=2, vectorization_mode="threads")


# --- parameters with meanings of our own ---------------------------------------------------------

def test_config_file_cwd_and_task(sandbox_driver: RuntimeDriver, tmp_path: Path) -> None:
    config = tmp_path / "sandbox.toml"
    config.write_text(
        "[sandbox]\n"
        f"packages = {PACKAGES!r}\n".replace("'", '"')
        + f"imports = {IMPORTS!r}\n".replace("'", '"')
        + 'task = "cartpole"\n'
    )
    # A relative local source resolves against cwd; the config supplies packages, imports, task.
    with rnp.SandboxEnv("envhub_demo", config=config, cwd=HERE, runtime=sandbox_driver) as env:
        assert env.action_space == gym.spaces.Discrete(2)
        assert env.source.task == "cartpole"


def test_override_fragment_and_full_dockerfile(sandbox_driver: RuntimeDriver, tmp_path: Path) -> None:
    fragment = tmp_path / "extra.Dockerfile"
    fragment.write_text("RUN echo fragment-applied > /opt/rlmesh/marker\n")
    with rnp.SandboxEnv(str(HERE / "marker_env"), override=fragment, packages=PACKAGES,
                        imports=IMPORTS, runtime=sandbox_driver) as env:
        assert env.metadata["marker"] == "fragment-applied"
        image = env.image
    full = tmp_path / "full" / "Dockerfile"
    full.parent.mkdir()
    (full.parent / "marker.txt").write_text("from-the-context\n")
    full.write_text(f"FROM {image}\nUSER root\nCOPY marker.txt /opt/rlmesh/marker\nUSER rlmesh\n")
    with rnp.SandboxEnv(str(HERE / "marker_env"), override=full, runtime=sandbox_driver) as env:
        assert env.metadata["marker"] == "from-the-context"


def test_gpu_capability_is_refused_clearly_without_gpus(sandbox_driver: RuntimeDriver) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has GPUs; the refusal path cannot be shown here")
    before = set(ours(sandbox_driver, os.getpid()))
    with pytest.raises(RuntimeDriverError, match="(?i)gpu"):
        rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS,
                       capabilities=["gpu"], runtime=sandbox_driver)
    assert set(ours(sandbox_driver, os.getpid())) == before


def test_local_rlmesh_package_from_repo_root(sandbox_driver: RuntimeDriver) -> None:
    repo = HERE.parents[1]  # the checkout these tests belong to
    with rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS, rlmesh_package="local",
                        repo_root=repo, runtime=sandbox_driver) as env:
        assert env.env_contract.server_version == rlmesh.__version__
        env.reset(seed=0)


def test_sandbox_is_keyed_and_runs_hardened(sandbox_driver: RuntimeDriver, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the host's session keys go
    with rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS, runtime=sandbox_driver) as env:
        assert not list(tmp_path.glob("rlmesh-keys-*")), "the host kept the session's key files"
        assert env.container_id is not None
        attrs = engine_inspect(sandbox_driver, env.container_id)
        assert attrs["Config"]["User"] not in ("", "0", "root"), attrs["Config"]["User"]
        assert "secret-key" not in json.dumps(attrs), "a secret certificate shows in inspect"
        # No outbound network unless asked for: the engine's offline network.
        assert attrs["HostConfig"]["NetworkMode"] in ("rlmesh-offline", "slirp4netns"), attrs["HostConfig"]

        # A stranger who reaches the port gets nowhere, keyless or with keys of its own...
        with pytest.raises(AuthenticationError, match="requires keys"):
            rnp.RemoteEnv(env.address, connect_timeout=5)
        server_key, _ = new_keypair("guess", tmp_path / "stranger")
        _, client_key = new_keypair("stranger", tmp_path / "stranger")
        with pytest.raises(AuthenticationError, match="is not the key of the server"):
            rnp.RemoteEnv(env.address, connect_timeout=5, server_key=server_key, client_key=client_key)
        # ...while the owner steps on.
        obs, _ = env.reset(seed=3)
        assert env.step(0)[0].shape == obs.shape


DYING = str(HERE / "dying_env")


@pytest.mark.parametrize("fate, exit_code, words", [
    ("segfault", 139, "exited with code 139 (SIGSEGV)"),
    ("exit", 7, "exited with code 7;"),
])
def test_a_container_that_dies_mid_episode_raises_sandbox_crashed(
        sandbox_driver: RuntimeDriver, fate: str, exit_code: int, words: str) -> None:
    with rnp.SandboxEnv(DYING, packages=PACKAGES, runtime=sandbox_driver, fate=fate) as env:
        env.reset(seed=0)
        started = time.monotonic()
        with pytest.raises(SandboxCrashed, match=re.escape(words)) as crashed:
            env.step(0)
        assert time.monotonic() - started < 10, "the crash took too long to surface"
        assert crashed.value.exit_code == exit_code and not crashed.value.oom_killed
        assert isinstance(crashed.value, ConnectionError)
        # The container is gone at once, and every later call says the same.
        assert env.container_id not in ours(sandbox_driver)
        with pytest.raises(SandboxCrashed):
            env.step(0)


def test_limits_env_and_shm_reach_the_container(sandbox_driver: RuntimeDriver, caplog: pytest.LogCaptureFixture) -> None:
    options: dict[str, Any] = dict(packages=PACKAGES, runtime=sandbox_driver, cpus=0.5, memory="300m",
                                   shm_size="80m", env={"DYING_MODE": "osmesa"})
    if not sandbox_driver.supports_limits:
        with pytest.raises(RuntimeDriverError, match="cannot enforce memory='300m', cpus=0.5"):
            rnp.SandboxEnv(DYING, **options)
        options["strict_limits"] = False
    with rnp.SandboxEnv(DYING, **options) as env:
        _, info = env.reset(seed=0)
    assert info["env"] == {"DYING_MODE": "osmesa"}
    assert info["shm_bytes"] == 80 * 2**20
    if not sandbox_driver.supports_limits:  # opted out: unlimited, and said so
        assert "running without memory='300m', cpus=0.5" in caplog.text
        return
    assert info["memory_limit"] == str(300 * 2**20), info
    quota = info["cpu_max"].split() if info["cpu_max"] else [info["cfs_quota"], info["cfs_period"]]
    assert int(quota[0]) / int(quota[1]) == 0.5, info


def test_the_oom_killer_under_memory_raises_sandbox_crashed(sandbox_driver: RuntimeDriver,
                                                            sandbox_engine: Any) -> None:
    if not sandbox_driver.supports_limits:
        # Rootless podman on cgroup v1 cannot limit memory: no limit to run out of, and asking
        # for one is refused before any container starts.
        before = set(ours(sandbox_driver))
        with pytest.raises(RuntimeDriverError, match="cannot enforce memory='200m'"):
            rnp.SandboxEnv(DYING, packages=PACKAGES, runtime=sandbox_driver, memory="200m", fate="oom")
        assert set(ours(sandbox_driver)) == before
        return
    with rnp.SandboxEnv(DYING, packages=PACKAGES, runtime=sandbox_driver, memory="200m", fate="oom") as env:
        env.reset(seed=0)
        with pytest.raises(SandboxCrashed, match="memory='200m'.*OOM killer|OOM killer.*memory='200m'") as crashed:
            env.step(0)
    assert crashed.value.exit_code == 137
    assert env.container_id not in ours(sandbox_driver)
    if "podman" in sandbox_engine.id:
        # podman 4.3 on cgroup v1 never sets State.OOMKilled (not even for a bare `podman run`);
        # the message says the OOM kill is likely without claiming the engine reported it.
        assert not crashed.value.oom_killed and "did not report one" in str(crashed.value)
    else:
        assert crashed.value.oom_killed and "was killed by the kernel's OOM killer" in str(crashed.value)


def test_numpy_sandboxes_are_gymnasium_envs_for_trainers(docker_driver: RuntimeDriver) -> None:
    from gymnasium.wrappers import RecordEpisodeStatistics
    from gymnasium.wrappers.vector import RecordEpisodeStatistics as RecordVectorStatistics

    with rnp.SandboxEnv("CartPole-v1", packages=PACKAGES, imports=IMPORTS, runtime=docker_driver,
                        render_mode="rgb_array", max_episode_steps=5) as env:
        assert isinstance(env, gym.Env)
        wrapped = RecordEpisodeStatistics(env)
        wrapped.reset(seed=0)
        done, info = False, {}
        while not done:
            _, _, terminated, truncated, info = wrapped.step(0)
            done = terminated or truncated
        assert info["episode"]["l"] == 5
        assert env.get_attr("gravity") == 9.8 and env.get_wrapper_attr("gravity") == 9.8
        env.set_attr("gravity", 5.0)
        assert env.get_attr("gravity") == 5.0
        assert env.render().shape == (400, 600, 3)
    with rnp.SandboxVectorEnv("CartPole-v1", 3, packages=PACKAGES, imports=IMPORTS, runtime=docker_driver,
                              render_mode="rgb_array") as envs:
        assert isinstance(envs, gym.vector.VectorEnv)
        # What the server reported, not VectorEnv's empty class attributes.
        assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
        assert envs.render_mode == "rgb_array"
        stats = RecordVectorStatistics(envs)
        stats.reset(seed=[0, 1, 2])
        envs.step_async(np.zeros(3, dtype=np.int64))
        observations, rewards, *_ = envs.step_wait()
        assert observations.shape == (3, 4) and rewards.tolist() == [1.0, 1.0, 1.0]
        with pytest.raises(gym.error.NoAsyncCallError):
            envs.step_wait()
        assert envs.get_attr("gravity") == (9.8, 9.8, 9.8)
        frames = envs.render()
        assert len(frames) == 3 and all(frame.shape == (400, 600, 3) for frame in frames)


def test_a_spread_endpoint_that_dies_raises_sandbox_crashed(docker_driver: RuntimeDriver) -> None:
    env = rnp.spread_vector_env(DYING, 2, per_endpoint=1, runtime=docker_driver, packages=PACKAGES, fate="exit")
    try:
        env.reset(seed=0)
        with pytest.raises(SandboxCrashed, match=r"endpoint .*lane 0.*exited with code 7") as crashed:
            env.step(np.zeros(2, dtype=np.int64))
        assert crashed.value.exit_code == 7
    finally:
        env.close()
    assert ours(docker_driver, os.getpid()) == []
