"""rlmesh.sb3: ``env_method`` / ``get_attr`` / ``set_attr`` with ``indices`` touch those lanes only.

The served env is ``core_envs.tunable_vec`` (``tests/core/core_serve.py``, in another process):
lane ``i`` has difficulty ``i`` and ``bump()`` counts its calls per sub-env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh.numpy as rnp
from rlmesh.sb3 import as_vec_env


def test_env_method_get_attr_and_set_attr_of_some_lanes(spawn_server: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 3})
    venv = as_vec_env(rnp.RemoteVectorEnv(server.address))
    try:
        assert venv.env_method("bump", indices=[1]) == [1]
        assert venv.get_attr("bumps") == [0, 1, 0]
        assert venv.env_method("bump", by=4, indices=2) == [4]  # an int index, keywords to the method
        assert venv.get_attr("bumps") == [0, 1, 4]
        assert [d["difficulty"] for d in venv.env_method("describe", indices=[2, 0])] == [2.0, 0.0]
        # Gymnasium's get_attr calls a method: of the chosen lane only.
        assert venv.get_attr("bump", indices=[0]) == [1]
        assert venv.get_attr("bumps") == [1, 1, 4]

        venv.set_attr("difficulty", 7.0, indices=[0, 2])
        assert venv.get_attr("difficulty") == [7.0, 1.0, 7.0]
        venv.set_attr("difficulty", 8.0, indices=[1, 1])  # a lane twice is still that lane
        assert venv.get_attr("difficulty", indices=[1, 0, 1]) == [8.0, 7.0, 8.0]
        # An attribute lane 1 does not have: set without reading or rewriting lane 1.
        venv.set_attr("label", "picked", indices=[0, 2])
        assert venv.get_attr("label", indices=[2, 0]) == ["picked", "picked"]
        assert not venv.has_attr("label")
        with pytest.raises(AttributeError, match="label"):
            venv.get_attr("label", indices=[1])

        assert venv.env_method("bump", indices=[0, 1, 2]) == [2, 2, 5]  # every lane: one call()
        assert venv.env_method("bump", indices=[]) == []
    finally:
        venv.close()


def test_lanes_spanning_two_endpoints(spawn_server: Any) -> None:
    first = spawn_server("tunable_vec", env_kwargs={"num_envs": 2})   # lanes 0-1
    second = spawn_server("tunable_vec", env_kwargs={"num_envs": 2})  # lanes 2-3, difficulties 0-1
    venv = as_vec_env(rnp.MultiEndpointVectorEnv([first.address, second.address]))
    try:
        assert venv.env_method("bump", by=3, indices=[3, 1]) == [3, 3]
        assert venv.get_attr("bumps") == [0, 3, 0, 3]
        venv.set_attr("difficulty", 5.0, indices=[0, 2])
        assert venv.get_attr("difficulty") == [5.0, 1.0, 5.0, 1.0]
        assert venv.get_attr("difficulty", indices=[3, 0]) == [1.0, 5.0]
    finally:
        venv.close()


def test_a_served_async_vector_env(spawn_server: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 3, "mode": "async"})
    venv = as_vec_env(rnp.RemoteVectorEnv(server.address))
    try:
        with pytest.raises(AttributeError, match="needs a vector env with a sub-env list"):
            venv.env_method("bump", indices=[1])
        assert venv.get_attr("bumps") == [0, 0, 0]  # refused, not run on every lane
        # Reading and writing attributes of some lanes still works: through every lane.
        assert venv.get_attr("difficulty", indices=[2]) == [2.0]
        venv.set_attr("difficulty", 6.0, indices=[1])
        assert venv.get_attr("difficulty") == [0.0, 6.0, 2.0]
    finally:
        venv.close()


def test_a_local_async_vector_env_says_why_it_cannot() -> None:
    local = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="async")
    venv = as_vec_env(local)
    try:
        with pytest.raises(NotImplementedError, match="neither call_lanes\\(\\) nor a sub-env list"):
            venv.env_method("get_wrapper_attr", "gravity", indices=[1])
        assert venv.env_method("get_wrapper_attr", "gravity") == [9.8, 9.8]
        venv.set_attr("gravity", 5.0, indices=[1])
        assert venv.get_attr("gravity") == [9.8, 5.0]
        venv.reset()
        venv.step(np.zeros(2, dtype=np.int64))
    finally:
        venv.close()
