"""Many clients on one server: an env per session from a factory, isolated and concurrent."""

from __future__ import annotations

import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import zmq

import rlmesh.numpy as rnp
from rlmesh import EnvironmentException, EnvServer, ServerBusyError
from rlmesh.protocol import PROTOCOL_GENERATION
from rlmesh.protocol.sessions import UNPROVEN_GRACE
from rlmesh.wire import codec


def test_four_sessions_step_like_four_local_envs(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole", factory=True, max_sessions=4)
    remotes = [clients(rnp.RemoteEnv, server.address) for _ in range(4)]
    locals_ = [gym.make("CartPole-v1") for _ in range(4)]
    rng = np.random.default_rng(0)
    for i, (remote, local) in enumerate(zip(remotes, locals_)):
        assert remote.reset(seed=10 + i)[0].tolist() == local.reset(seed=10 + i)[0].tolist()
    for _ in range(200):  # interleaved, in a random order each round
        for i in map(int, rng.permutation(4)):
            action = int(rng.integers(2))
            got, want = remotes[i].step(action), locals_[i].step(action)
            assert got[0].tolist() == want[0].tolist() and got[1:4] == want[1:4]
            if want[2] or want[3]:
                assert remotes[i].reset(seed=i)[0].tolist() == locals_[i].reset(seed=i)[0].tolist()


def test_a_client_past_max_sessions_is_refused_naming_the_limit(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole", factory=True, max_sessions=2)
    first = clients(rnp.RemoteEnv, server.address)
    second = clients(rnp.RemoteEnv, server.address)
    for env in (first, second):
        env.reset(seed=0)
    with pytest.raises(ServerBusyError, match="max_sessions=2"):
        rnp.RemoteEnv(server.address)
    second.close()  # its env is closed, its place free
    third = clients(rnp.RemoteEnv, server.address)
    assert third.reset(seed=0)[0].shape == (4,) and first.step(0)[0].shape == (4,)


def test_sessions_are_isolated_and_a_slow_env_stalls_only_its_client(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("faulty", factory=True, max_sessions=2)
    slow, quick = clients(rnp.RemoteEnv, server.address), clients(rnp.RemoteEnv, server.address)
    slow.reset(), quick.reset()
    with pytest.raises(EnvironmentException, match="blew up"):
        slow.step(2)  # an error in one session...
    assert quick.step(0)[1] == 1.0  # ...is not the other's
    sleeper = threading.Thread(target=slow.step, args=(3,))  # this step sleeps 4 s in the env
    sleeper.start()
    time.sleep(0.3)
    began = time.monotonic()
    for _ in range(20):
        assert quick.step(0)[1] == 1.0
    assert time.monotonic() - began < 2.0, "the quick client waited for the slow one"
    sleeper.join(10)


def test_one_hello_cannot_hold_a_keyless_server(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole")
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect(server.address)
    try:
        stranger.send_multipart(codec.encode(["hello", 1, "stranger", {"protocol": PROTOCOL_GENERATION}]))
        assert stranger.poll(5000), "the stranger's hello got no answer"
        stranger.recv_multipart()  # attached
        deadline = time.monotonic() + UNPROVEN_GRACE + 0.5
        while time.monotonic() < deadline:  # it keeps its session alive, but never asks for anything
            stranger.send_multipart(codec.encode(["heartbeat", 0, "stranger", None]))
            time.sleep(0.2)
        env = clients(rnp.RemoteEnv, server.address)  # not ServerBusyError
        assert env.reset(seed=0)[0].shape == (4,)
    finally:
        stranger.close()


def test_max_sessions_needs_a_factory() -> None:
    with pytest.raises(ValueError, match="needs an env factory"):
        EnvServer(gym.make("CartPole-v1"), max_sessions=2)
