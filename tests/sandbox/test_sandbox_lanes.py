"""SandboxVectorEnv has the lane-targeted calls of its client: call_lanes, get_attr_lanes, set_attr_lanes."""

from __future__ import annotations

import inspect

import pytest

import rlmesh.numpy as rnp
from rlmesh.client.remote import RemoteVectorEnvBase
from rlmesh.runtime import RuntimeDriver
from rlmesh.sandbox.session import SandboxVectorEnvBase

from .conftest import IMPORTS, PACKAGES


@pytest.mark.parametrize("name", ["call_lanes", "get_attr_lanes", "set_attr_lanes"])
def test_sandbox_vector_envs_take_what_their_client_takes(name: str) -> None:
    assert inspect.signature(getattr(SandboxVectorEnvBase, name)) == inspect.signature(
        getattr(RemoteVectorEnvBase, name))


def test_lane_calls_in_a_sandbox_touch_those_lanes_only(docker_driver: RuntimeDriver) -> None:
    with rnp.SandboxVectorEnv("CartPole-v1", 3, packages=PACKAGES, imports=IMPORTS,
                              runtime=docker_driver) as envs:
        envs.set_attr_lanes([2, 0], "gravity", [5.0, 6.0])
        assert envs.get_attr("gravity") == (6.0, 9.8, 5.0)
        assert envs.get_attr_lanes([1, 2], "gravity") == (9.8, 5.0)
        assert envs.call_lanes([0], "get_wrapper_attr", "gravity") == (6.0,)
