"""call/get_attr/set_attr on some lanes only: ``call_lanes``, ``get_attr_lanes``, ``set_attr_lanes``.

The served env is ``core_envs.tunable_vec``: lane ``i`` has difficulty ``i``, and ``bump()``
counts its calls per sub-env, so ``get_attr("bumps")`` shows which lanes a call reached.
Servers run in other processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import EnvironmentException, ProtocolError
from rlmesh.protocol.messages import Request


def test_call_lanes_runs_only_on_the_given_lanes_in_their_order(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 4})
    env = clients(rnp.RemoteVectorEnv, server.address)
    assert env.call_lanes([2, 0], "bump") == (1, 1)
    assert env.call_lanes([2], "bump", by=10) == (11,)  # keywords reach the method
    assert env.get_attr("bumps") == (1, 0, 11, 0)  # lanes 1 and 3 were never called
    assert env.get_attr_lanes([3, 1, 2], "difficulty") == (3.0, 1.0, 2.0)
    assert env.call_lanes(np.array([3]), "describe") == ({"difficulty": 3.0, "tag": "tunable"},)
    scaled = env.call_lanes([1, 0], "scaled", np.arange(2, dtype=np.int32), factor=3)
    assert len(scaled) == 2 and all(part.tolist() == [0, 3] for part in scaled)
    assert env.call_lanes([], "bump") == ()
    # lane_ids and name are positional-only: keywords of those names are the method's.
    with pytest.raises(EnvironmentException, match="unexpected keyword argument 'lane_ids'"):
        env.call_lanes([0], "bump", lane_ids=[1], name="x")
    assert env.get_attr("bumps") == (1, 0, 11, 0)


def test_set_attr_lanes_leaves_the_other_lanes_alone(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 3})
    env = clients(rnp.RemoteVectorEnv, server.address)
    env.set_attr_lanes([2, 0], "difficulty", [20.0, 0.5])  # values in the order of the lane ids
    assert env.get_attr("difficulty") == (0.5, 1.0, 20.0)
    env.set_attr_lanes([1], "difficulty", 7.0)  # one value for each lane id
    assert env.get_attr("difficulty") == (0.5, 7.0, 20.0)
    # A new attribute on two lanes: the third never gets it (nothing was written back there).
    env.set_attr_lanes([0, 2], "label", "picked")
    assert env.get_attr_lanes([0, 2], "label") == ("picked", "picked")
    with pytest.raises(AttributeError, match="label"):
        env.get_attr_lanes([1], "label")
    with pytest.raises(ValueError, match="got 1 values for 2 lane ids"):
        env.set_attr_lanes([0, 1], "difficulty", [1.0])


def test_bad_lane_ids_are_refused_and_the_server_serves_on(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 3})
    env = clients(rnp.RemoteVectorEnv, server.address)
    with pytest.raises(ValueError, match="lane id 3 out of range for 3 lanes"):
        env.call_lanes([0, 3], "bump")
    with pytest.raises(ValueError, match="lane id 1 appears twice"):
        env.set_attr_lanes([1, 1], "difficulty", 2.0)
    for wrong in ([True], [0.5], ["0"]):
        with pytest.raises(TypeError, match="lane ids must be ints"):
            env.call_lanes(wrong, "bump")
    with pytest.raises(TypeError, match="list of lane numbers"):
        env.call_lanes(1, "bump")
    # What another client could send: the server checks the lanes itself.
    refused = [
        (Request.CALL, {"name": "bump", "lanes": "0"}, "lanes must be a list of int lane ids"),
        (Request.CALL, {"name": "bump", "lanes": [0, True]}, "lanes must be a list of int lane ids"),
        (Request.CALL, {"name": "bump", "lanes": [1.0]}, "lanes must be a list of int lane ids"),
        (Request.CALL, {"name": "bump", "lanes": [0, 5, -1]}, r"lane ids \[5, -1\] out of range for 3 lanes"),
        (Request.CALL, {"name": "bump", "lanes": [2, 0, 2]}, r"lane ids \[2\] appear more than once"),
        (Request.SET_ATTR, {"name": "difficulty", "values": [1.0], "lanes": [3]}, "out of range"),
        (Request.SET_ATTR, {"name": "difficulty", "values": [1.0], "lanes": [0, 1]},
         r"one value per requested lane \(2\)"),
    ]
    for kind, payload, message in refused:
        with pytest.raises(ProtocolError, match=message):
            env._request(kind, payload, "a hand-made request")
    assert env.get_attr("bumps") == (0, 0, 0)  # nothing ran anywhere
    assert env.get_attr("difficulty") == (0.0, 1.0, 2.0)
    env._request(Request.CALL, {"name": "bump", "lanes": None}, "no lanes")  # None: every lane
    assert env.get_attr("bumps") == (1, 1, 1)


def test_a_served_async_vector_env_refuses_lane_subsets(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteVectorEnv, server_pool("tunable_vec", num_envs=3, mode="async"))
    with pytest.raises(AttributeError, match="needs a vector env with a sub-env list"):
        env.call_lanes([1], "bump")
    with pytest.raises(AttributeError, match="needs a vector env with a sub-env list"):
        env.set_attr_lanes([1], "difficulty", 5.0)
    assert env.get_attr("bumps") == (0, 0, 0)  # refused, not run on every lane instead
    assert env.get_attr("difficulty") == (0.0, 1.0, 2.0)


def test_a_single_env_server_has_one_lane(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable", env_kwargs={"difficulty": 2.5})
    env = clients(rnp.RemoteEnv, server.address)
    assert env._request(Request.CALL, {"name": "bump", "lanes": [0]}, "lane 0") == (1,)
    assert env._request(Request.CALL, {"name": "bump", "lanes": []}, "no lane") == ()
    with pytest.raises(ProtocolError, match="out of range for 1 lanes"):
        env._request(Request.CALL, {"name": "bump", "lanes": [1]}, "lane 1")
    assert env.get_attr("bumps") == 1


def test_multi_endpoint_lanes_reach_only_their_endpoints(spawn_server: Any) -> None:
    first = spawn_server("tunable_vec", env_kwargs={"num_envs": 2})   # lanes 0-1
    second = spawn_server("tunable_vec", env_kwargs={"num_envs": 3})  # lanes 2-4, difficulties 0-2
    single = spawn_server("tunable", env_kwargs={"difficulty": 9.0})  # lane 5
    env = rnp.MultiEndpointVectorEnv([first.address, second.address, single.address])
    try:
        assert env.call_lanes([3, 1, 5], "bump", by=2) == (2, 2, 2)
        assert env.get_attr("bumps") == (0, 2, 0, 2, 0, 2)
        assert env.get_attr_lanes([4, 0, 5, 2], "difficulty") == (2.0, 0.0, 9.0, 0.0)
        env.set_attr_lanes([5, 0, 3], "difficulty", [50.0, 40.0, 30.0])
        assert env.get_attr("difficulty") == (40.0, 1.0, 0.0, 30.0, 2.0, 50.0)
        with pytest.raises(ValueError, match="lane id 6 out of range for 6 lanes"):
            env.call_lanes([6], "bump")
        first.kill()  # lanes of the other endpoints do not need it
        assert env.call_lanes([4, 2], "bump") == (1, 1)
        env.set_attr_lanes([5], "difficulty", 1.5)
        assert env.get_attr_lanes([5, 2, 3, 4], "difficulty") == (1.5, 0.0, 30.0, 2.0)
        with pytest.raises(ConnectionError, match="lanes 0-1"):
            env.call_lanes([0], "bump")
    finally:
        env.close()


def test_the_plain_flavour_converts_lane_results(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2})
    plain = clients(rlmesh.RemoteVectorEnv, server.address)
    (scaled,) = plain.call_lanes([1], "scaled", rnp.from_array(np.ones(2, np.float32)))
    assert isinstance(scaled, rlmesh.Tensor) and rnp.asarray(scaled).tolist() == [2.0, 2.0]
