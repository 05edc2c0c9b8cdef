"""Session keywords, checked on the host before anything is built (no engine needed).

A keyword that is not a sandbox option goes to the env's constructor inside the container; one
that looks like a misspelt option is refused here, naming the option it probably meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rlmesh.numpy as rnp
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
    ("memroy", "build_memory"),
    ("memory", "build_memory"),
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
