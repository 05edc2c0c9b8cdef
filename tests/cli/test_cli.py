"""The ``rlmesh`` command through its real entry point: success paths and failure paths.

Exit codes are part of the contract: 0 success, 1 failure (one line plus a hint), 2 usage.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import gymnasium
import pytest

from rlmesh import __version__
from rlmesh.numpy import RemoteEnv, RemoteVectorEnv
from rlmesh.runtime import installed_drivers

from .conftest import CLI_DIR, Serving, rlmesh
from .helpers_envs import lean_policy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_returns(policy, episodes: int, seed: int, **make_kwargs) -> list[float]:
    """The same evaluation run in-process with Gymnasium, for comparison."""
    env = gymnasium.make("CartPole-v1", **make_kwargs)
    returns = []
    for index in range(episodes):
        obs, _ = env.reset(seed=seed + index)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def assert_failure(result, *needles: str) -> None:
    """Exit 1, an 'Error:' line naming the problem, a 'Hint:' line, and no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert any(line.startswith("Hint: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


# --- basics ---------------------------------------------------------------------------------------

def test_version_and_help() -> None:
    version = rlmesh("--version")
    assert version.returncode == 0 and __version__ in version.stdout
    usage = rlmesh("--help")
    assert usage.returncode == 0
    for command in ("serve", "eval", "runtimes", "doctor", "images", "sandbox"):
        assert command in usage.stdout


@pytest.mark.parametrize("args", [
    ["frobnicate"],                                   # unknown command
    ["serve"],                                        # missing argument
    ["eval", "CartPole-v1", "--episodes", "0"],       # out of range
    ["eval", "CartPole-v1", "--seed", "abc"],         # wrong type
    ["serve", "CartPole-v1", "--", "not-key-value"],  # malformed make kwargs
    ["serve", "CartPole-v1", "--vectorization-mode", "threads"],
    ["eval", "CartPole-v1", "--policy", "no colon"],
    ["serve", "127.0.0.1:5555"],                      # an address is not something to serve
    ["images", "list", "--bogus"],
    ["serve", "helpers_envs.py:make_cartpole", "--num-envs", "2"],  # factories choose their own lanes
])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = rlmesh(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Usage:" in result.stderr or "Error:" in result.stderr


# --- failure paths --------------------------------------------------------------------------------

def test_unreachable_address_fails_fast_with_hint() -> None:
    started = time.monotonic()
    result = rlmesh("eval", f"tcp://127.0.0.1:{free_port()}", "--connect-timeout", "1")
    assert time.monotonic() - started < 20
    assert_failure(result, "no rlmesh server answered")
    assert "rlmesh serve" in result.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_the_traceback(where: str) -> None:
    args = ["eval", f"127.0.0.1:{free_port()}", "--connect-timeout", "1"]
    result = rlmesh(*(["--verbose", *args] if where == "before" else [*args, "-v"]))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConnectionError" in result.stderr


@pytest.mark.parametrize("args", [
    ["sandbox", "ls", "--runtime", "no-such-runtime"],
    ["images", "list", "--runtime", "no-such-runtime"],
    ["sandbox", "reap", "--runtime", "no-such-runtime"],
])
def test_unknown_runtime(args: list[str]) -> None:
    result = rlmesh(*args)
    assert_failure(result, "Unknown runtime driver 'no-such-runtime'", "Installed drivers:")
    assert "rlmesh runtimes" in result.stderr


def test_unknown_runtime_from_environment() -> None:
    result = rlmesh("sandbox", "ls", env={"RLMESH_RUNTIME": "no-such-runtime"})
    assert_failure(result, "'no-such-runtime'")


@pytest.mark.parametrize("source, needle", [
    ("not a source", "cannot understand source"),
    ("Nope-v0", "cannot make 'Nope-v0'"),
    ("hf://owner/repo:suite/task", "not pinned to a commit"),
    ("hf://owner/repo@" + "a" * 40 + ":suite", "trust_remote_code"),
    ("hf://bad owner/repo", "invalid Hugging Face source"),
])
def test_bad_sources_are_refused_before_anything_starts(source: str, needle: str) -> None:
    result = rlmesh("serve", source, "--address", "tcp://127.0.0.1:0", timeout=60)
    assert_failure(result, needle)


def test_unpinned_hf_hint_names_the_cli_flags() -> None:
    result = rlmesh("eval", "hf://owner/repo:suite/task")
    assert_failure(result, "not pinned")
    assert "--allow-unpinned-hf" in result.stderr


def test_missing_policy_module_and_attribute() -> None:
    assert_failure(rlmesh("eval", "CartPole-v1", "--policy", "no_such_module_xyz:act"), "cannot import")
    assert_failure(rlmesh("eval", "CartPole-v1", "--policy", "helpers_envs.py:nope"), "no attribute 'nope'")


def test_policy_exception_is_one_line_and_exit_1() -> None:
    result = rlmesh("eval", "CartPole-v1", "--policy", "helpers_envs.py:broken_policy", "-e", "1")
    assert_failure(result, "the policy broke on purpose")
    assert "episode 0" in result.stderr


def test_port_in_use_is_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = rlmesh("serve", "CartPole-v1", "--address", f"127.0.0.1:{port}")
    assert_failure(result, f"cannot listen on tcp://127.0.0.1:{port}")


# --- serve and eval -------------------------------------------------------------------------------

@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_gym_id_then_drive_it_and_stop_cleanly(serving: list[Serving], stop_signal: int) -> None:
    server = Serving(["CartPole-v1", "--address", "tcp://127.0.0.1:0", "--", "max_episode_steps=7"])
    serving.append(server)
    assert server.address.startswith("tcp://127.0.0.1:")
    with RemoteEnv(server.address) as env:
        env.reset(seed=0)
        steps, truncated = 0, False
        while not truncated:
            _, _, terminated, truncated, _ = env.step(0)
            steps += 1
            assert not terminated or steps < 7
            if terminated:
                break
        assert steps <= 7  # the make kwarg reached gymnasium.make
    assert server.stop(stop_signal) == 0
    assert "Stopped." in server.proc.stderr.read()


def test_serve_unix_socket(serving: list[Serving], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("s", numbered=True) / "env.sock"
    server = Serving(["CartPole-v1", "--address", f"unix://{path}"])
    serving.append(server)
    assert server.address == f"unix://{path}"
    with RemoteEnv(server.address) as env:
        obs, _ = env.reset(seed=1)
        assert obs.shape == (4,)
    assert server.stop() == 0
    assert not path.exists()


def test_serve_vector_env(serving: list[Serving]) -> None:
    server = Serving(["CartPole-v1", "--address", "tcp://127.0.0.1:0", "--num-envs", "3"])
    serving.append(server)
    with RemoteVectorEnv(server.address) as env:
        assert env.num_envs == 3
        obs, _ = env.reset(seed=0)
        assert obs.shape == (3, 4)
    assert server.stop() == 0


def test_serve_answers_calls_unless_told_not_to(serving: list[Serving]) -> None:
    allowed = Serving(["CartPole-v1", "--address", "tcp://127.0.0.1:0", "--num-envs", "2"])
    refused = Serving(["CartPole-v1", "--address", "tcp://127.0.0.1:0", "--no-allow-calls"])
    serving += [allowed, refused]
    with RemoteVectorEnv(allowed.address) as env:
        assert env.get_attr("gravity") == (9.8, 9.8)
    with RemoteEnv(refused.address) as env:
        with pytest.raises(PermissionError, match="allow_calls=False"):
            env.get_attr("gravity")
        env.reset(seed=0)  # everything else is served
    assert allowed.stop() == 0 and refused.stop() == 0


@pytest.mark.parametrize("factory, vector", [
    ("helpers_envs.py:make_cartpole", False),
    ("helpers_envs.py:make_two_cartpoles", True),
])
def test_serve_factory(serving: list[Serving], factory: str, vector: bool) -> None:
    args = [factory, "--address", "tcp://127.0.0.1:0"] + ([] if vector else ["--", "max_episode_steps=3"])
    server = Serving(args)
    serving.append(server)
    client_class = RemoteVectorEnv if vector else RemoteEnv
    with client_class(server.address) as env:
        env.reset(seed=0)
        if vector:
            assert env.num_envs == 2
        else:
            steps, done = 0, False
            while not done:
                _, _, terminated, truncated, _ = env.step(1)
                steps += 1
                done = terminated or truncated
            assert steps <= 3
    assert server.stop() == 0


def test_eval_module_factory_resolves_from_the_cwd() -> None:
    result = rlmesh("eval", "tests.cli.helpers_envs:make_cartpole", "-e", "1", "--json", "--",
                    "max_episode_steps=3", cwd=CLI_DIR.parent.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["episodes"][0]["steps"] <= 3


def test_eval_against_a_served_env_matches_local_gymnasium(serving: list[Serving]) -> None:
    server = Serving(["CartPole-v1", "--address", "tcp://127.0.0.1:0"])
    serving.append(server)
    result = rlmesh("eval", server.address, "--episodes", "4", "--seed", "10",
                    "--policy", "helpers_envs.py:lean_policy", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    returns = [episode["return"] for episode in report["episodes"]]
    assert returns == local_returns(lean_policy, 4, 10)
    assert [episode["seed"] for episode in report["episodes"]] == [10, 11, 12, 13]
    assert report["num_episodes"] == 4
    assert report["total_steps"] == sum(episode["steps"] for episode in report["episodes"])
    assert server.stop() == 0


def test_eval_policy_class_with_predict() -> None:
    by_class = rlmesh("eval", "CartPole-v1", "-e", "2", "--policy", "helpers_envs.py:LeanModel", "--json")
    assert by_class.returncode == 0, by_class.stderr
    returns = [e["return"] for e in json.loads(by_class.stdout)["episodes"]]
    assert returns == local_returns(lean_policy, 2, 0)


def test_eval_random_policy_is_reproducible_and_prints_a_table() -> None:
    first = rlmesh("eval", "CartPole-v1", "-e", "3", "--seed", "5", "--json")
    second = rlmesh("eval", "CartPole-v1", "-e", "3", "--seed", "5", "--json")
    assert first.returncode == second.returncode == 0
    steps = [[e["steps"] for e in json.loads(r.stdout)["episodes"]] for r in (first, second)]
    assert steps[0] == steps[1]
    table = rlmesh("eval", "CartPole-v1", "-e", "2", "--max-steps", "4")
    assert table.returncode == 0, table.stderr
    assert "Evaluation of CartPole-v1" in table.stdout
    assert "mean return 4.000" in table.stdout  # both episodes cut at 4 steps of reward 1


def test_eval_of_a_vector_server_runs_its_lanes(serving: list[Serving]) -> None:
    server = Serving(["CartPole-v1", "--address", "tcp://127.0.0.1:0", "--num-envs", "2"])
    serving.append(server)
    result = rlmesh("eval", server.address, "-e", "4", "--seed", "3", "--policy",
                    "helpers_envs.py:lean_policy", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [e["return"] for e in report["episodes"]] == local_returns(lean_policy, 4, 3)
    assert server.stop() == 0


# --- runtimes and doctor --------------------------------------------------------------------------

def test_runtimes_lists_every_installed_driver() -> None:
    result = rlmesh("runtimes", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert sorted(row["name"] for row in rows) == sorted(installed_drivers())
    for row in rows:
        assert row["ok"] or row["reason"], row  # an unavailable driver always says why
        if row["ok"]:
            assert row["version"]
    table = rlmesh("runtimes")
    assert table.returncode == 0
    for name in installed_drivers():
        assert name in table.stdout


def test_runtimes_reports_why_an_engine_is_unreachable() -> None:
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "CONTAINER_HOST": "unix:///nonexistent/podman.sock",
           "RLMESH_CLI_ENGINE": "docker"}
    result = rlmesh("runtimes", "--json", env=env)
    assert result.returncode == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in ("docker", "podman"):
        if name in rows:
            assert not rows[name]["ok"] and rows[name]["reason"]


def test_doctor_checks_everything() -> None:
    result = rlmesh("doctor")
    for check in ("python", "zmq", "numpy", "torch", "gymnasium", "ml_dtypes", "huggingface_hub",
                  "docker", "podman", "python_on_whales", "docker socket"):
        assert check in result.stdout, check
    assert result.returncode in (0, 1)
    if result.returncode == 1:  # only a required check may fail it, and it says what to fix
        assert_failure(result, "required check(s) failed")


def test_doctor_fails_when_the_base_image_is_missing() -> None:
    rows = json.loads(rlmesh("runtimes", "--json").stdout)
    if not any(row["ok"] for row in rows):
        pytest.skip("no runtime is available here; the base-image check needs one")
    result = rlmesh("doctor", env={"RLMESH_BASE_IMAGE": "rlmesh-test-missing:none"})
    assert_failure(result, "base image on")
    assert "rlmesh images bootstrap --runtime" in result.stderr


def test_doctor_without_engines_only_warns() -> None:
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "CONTAINER_HOST": "unix:///nonexistent/podman.sock",
           "PATH": "/nonexistent"}
    result = rlmesh("doctor", env=env)
    assert result.returncode == 0, result.stderr
    assert "no runtime is available" in result.stdout


# --- keys -----------------------------------------------------------------------------------------

def test_keys_new_then_serve_and_eval_with_keys(serving: list[Serving], tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("server", "client"):
        result = rlmesh("keys", "new", name, "--dir", str(folder))
        assert result.returncode == 0, result.stderr
        assert (folder / f"{name}.key_secret").stat().st_mode & 0o777 == 0o600
    assert rlmesh("keys", "new", "server", "--dir", str(folder)).returncode == 1  # never overwrites
    authorized = folder / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_bytes((folder / "client.key").read_bytes())

    refused = rlmesh("serve", "CartPole-v1", "--address", f"tcp://0.0.0.0:{free_port()}", timeout=60)
    assert_failure(refused, "without keys", "insecure")
    assert "--server-key" in refused.stderr and "--insecure" in refused.stderr  # the CLI's spelling

    server = Serving(["CartPole-v1", "--address", "tcp://0.0.0.0:0", "--server-key",
                      str(folder / "server.key_secret"), "--authorized-keys", str(authorized)])
    serving.append(server)
    address = "127.0.0.1:" + server.address.rsplit(":", 1)[1]
    keyless = rlmesh("eval", address, "--episodes", "1", "--connect-timeout", "5")
    assert_failure(keyless, "requires keys")
    assert "Hint: on the command line: --server-key" in keyless.stderr
    keyed = rlmesh("eval", address, "--episodes", "2", "--json", "--server-key", str(folder / "server.key"),
                   "--client-key", str(folder / "client.key_secret"))
    assert keyed.returncode == 0, keyed.stderr
    assert len(json.loads(keyed.stdout)["episodes"]) == 2
    assert server.stop() == 0
