"""Prebuilt images: ``rlmesh images build`` ahead of time, then ``image://NAME`` with no build.

Also a bring-your-own image (not built by rlmesh, rlmesh installed) run by naming its factory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh.numpy as rnp
from rlmesh.errors import SandboxError, VersionMismatchError
from rlmesh.runtime import ImageRecipe, RuntimeDriver
from rlmesh.sandbox.session import SETTINGS_LABEL, SOURCE_LABEL

from .conftest import PACKAGES

HERE = Path(__file__).parent
RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def image_names(sandbox_driver: RuntimeDriver) -> Iterator[list[str]]:
    """Names a test gives images; each is removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        sandbox_driver.remove_image(name)


def _no_builds(monkeypatch: pytest.MonkeyPatch, driver: RuntimeDriver) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an image:// session built an image")

    monkeypatch.setattr(driver, "_build", refuse)
    monkeypatch.setattr("rlmesh.sandbox.session.resolve_rlmesh_package", refuse)


def test_build_once_then_run_without_building(sandbox_driver: RuntimeDriver, image_names: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rlmesh-test-prebuilt-{RUN}:cartpole"
    image_names.append(name)
    assert rnp.SandboxEnv.build_image("CartPole-v1", name, packages=PACKAGES, system_packages=["libgomp1"],
                                      runtime=sandbox_driver) == name
    labels = sandbox_driver.image_info(name).labels
    assert json.loads(labels[SOURCE_LABEL])["env_id"] == "CartPole-v1"
    assert json.loads(labels[SETTINGS_LABEL]) == {
        "source": "CartPole-v1", "packages": PACKAGES, "imports": [], "system_packages": ["libgomp1"]}

    _no_builds(monkeypatch, sandbox_driver)
    local = gym.make("CartPole-v1")
    with rnp.SandboxEnv(f"image://{name}", runtime=sandbox_driver) as env:
        np.testing.assert_array_equal(env.reset(seed=4)[0], local.reset(seed=4)[0])
        for action in (0, 1, 1, 0):
            np.testing.assert_array_equal(env.step(action)[0], local.step(action)[0])
    with rnp.SandboxVectorEnv(f"image://{name}", 2, runtime=sandbox_driver) as envs:
        assert envs.reset(seed=[1, 2])[0].shape == (2, 4)
    with pytest.raises(SandboxError, match="packages= shape an image at build time"):
        rnp.SandboxEnv(f"image://{name}", runtime=sandbox_driver, packages=["numpy"])


def test_an_image_of_another_rlmesh_is_refused_with_the_fix(sandbox_driver: RuntimeDriver,
                                                           image_names: list[str]) -> None:
    name = f"rlmesh-test-prebuilt-{RUN}:cartpole-old"
    image_names.append(name)
    built = rnp.SandboxEnv.build_image("CartPole-v1", name, packages=PACKAGES, runtime=sandbox_driver)
    older = ImageRecipe(f"FROM {built}\nLABEL io.rlmesh.version=0.0.1\n", repository="rlmesh-test-prebuilt-old")
    image_names.append(sandbox_driver.build(older))
    with pytest.raises(VersionMismatchError, match="built with rlmesh 0.0.1.*rebuild it here"):
        rnp.SandboxEnv(f"image://{older.tag}", runtime=sandbox_driver)


def test_bring_your_own_image_runs_its_named_factory(sandbox_driver: RuntimeDriver, image_names: list[str]) -> None:
    base = f"rlmesh-test-prebuilt-{RUN}:cartpole-base"
    image_names.append(base)
    rnp.SandboxEnv.build_image("CartPole-v1", base, packages=PACKAGES, runtime=sandbox_driver)
    # An image of the user's own: another user (numeric, as the contract asks), a module of its own.
    byo = ImageRecipe(f"FROM {base}\nUSER root\nCOPY byo_envs.py /opt/byo/byo_envs.py\n"
                      "ENV PYTHONPATH=/opt/byo\nUSER 4242\n",
                      context_files={"byo_envs.py": (HERE / "byo_image" / "byo_envs.py").read_bytes()},
                      repository="rlmesh-test-byo")
    image_names.append(sandbox_driver.build(byo))
    with rnp.SandboxEnv(f"image://{byo.tag}", entry="byo_envs:make_env", runtime=sandbox_driver,
                        max_episode_steps=3) as env:
        env.reset(seed=0)
        steps = 0
        while not any(env.step(0)[2:4]):
            steps += 1
        assert steps == 2  # max_episode_steps reached the factory
    with pytest.raises(SandboxError, match="entry="):
        rnp.SandboxEnv("image://rlmesh-base:bookworm", runtime=sandbox_driver)  # no rlmesh labels
    with pytest.raises(SandboxError, match="no image 'rlmesh-test-missing:1'.*rlmesh images build"):
        rnp.SandboxEnv("image://rlmesh-test-missing:1", runtime=sandbox_driver)
