"""Keyed endpoints: CurveZMQ certificates, who may attach, and the refusal to serve openly.

Servers run in their own processes and every client is real; each failure must be an
AuthenticationError (a ConnectionError) naming the key, well within the connect timeout, and
the server must go on serving its rightful clients.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import zmq

import rlmesh.numpy as rnp
from rlmesh import EnvServer
from rlmesh.errors import AuthenticationError
from rlmesh.protocol.keys import ClientKeys, ServerKeys, SessionKeys, new_keypair

CONNECT_TIMEOUT = 5.0


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A server pair, an authorized client pair, a stranger's pair and the authorized folder."""
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    found: dict[str, Path] = {"authorized": authorized}
    for name in ("server", "client", "stranger"):
        found[f"{name}_public"], found[f"{name}_secret"] = new_keypair(name, tmp_path / "keys")
    shutil.copy(found["client_public"], authorized)
    return found


@pytest.fixture
def keyed_server(spawn_server: Any, keys: dict[str, Path]) -> Any:
    return spawn_server("cartpole", server_key=str(keys["server_secret"]),
                        authorized_keys=str(keys["authorized"]))


def keyed_client(address: str, keys: dict[str, Path], **kwargs: Any) -> rnp.RemoteEnv:
    options: dict[str, Any] = {"server_key": keys["server_public"], "client_key": keys["client_secret"],
                               "connect_timeout": CONNECT_TIMEOUT, **kwargs}
    return rnp.RemoteEnv(address, **options)


def test_key_files_are_pyzmq_certificates_with_a_private_secret(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(os.stat(keys["client_secret"]).st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(str(keys["client_secret"]))
    assert secret is not None and zmq.auth.load_certificate(str(keys["client_public"])) == (public, None)


def test_an_authorized_client_steps_through_an_encrypted_session(keyed_server: Any, keys: dict[str, Path]) -> None:
    with keyed_client(keyed_server.address, keys) as env:
        obs, _ = env.reset(seed=3)
        local = gym.make("CartPole-v1")
        assert obs.tolist() == local.reset(seed=3)[0].tolist()
        assert env.step(1)[0].tolist() == local.step(1)[0].tolist()


@pytest.mark.parametrize("case, words", [
    ("wrong server key", "is not the key of the server"),
    ("client key not authorized", "refused this client's key"),
    ("keyless client", "requires keys"),
])
def test_a_wrong_or_missing_key_fails_fast_and_names_it(keyed_server: Any, keys: dict[str, Path],
                                                         case: str, words: str) -> None:
    options = {
        "wrong server key": {"server_key": keys["stranger_public"], "client_key": keys["client_secret"]},
        "client key not authorized": {"server_key": keys["server_public"], "client_key": keys["stranger_secret"]},
        "keyless client": {},
    }[case]
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match=words) as caught:
        rnp.RemoteEnv(keyed_server.address, connect_timeout=CONNECT_TIMEOUT, **options)
    assert time.monotonic() - started < CONNECT_TIMEOUT / 2
    assert isinstance(caught.value, ConnectionError)
    with keyed_client(keyed_server.address, keys) as env:  # the server serves on
        assert env.reset(seed=0)[0].shape == (4,)


def test_a_keyed_client_of_a_keyless_server_is_told_so(spawn_server: Any, keys: dict[str, Path]) -> None:
    server = spawn_server("cartpole")
    with pytest.raises(AuthenticationError, match="has no server key"):
        keyed_client(server.address, keys)


def test_keys_come_from_the_environment(keyed_server: Any, keys: dict[str, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_SERVER_KEY", str(keys["server_public"]))
    monkeypatch.setenv("RLMESH_CLIENT_KEY", str(keys["client_secret"]))
    with rnp.RemoteEnv(keyed_server.address, connect_timeout=CONNECT_TIMEOUT) as env:
        assert env.reset(seed=0)[0].shape == (4,)


def test_a_key_added_to_the_folder_is_honoured_without_a_restart(keyed_server: Any, keys: dict[str, Path]) -> None:
    stranger = {"server_key": keys["server_public"], "client_key": keys["stranger_secret"]}
    with pytest.raises(AuthenticationError):
        rnp.RemoteEnv(keyed_server.address, connect_timeout=CONNECT_TIMEOUT, **stranger)
    shutil.copy(keys["stranger_public"], keys["authorized"])
    with rnp.RemoteEnv(keyed_server.address, connect_timeout=CONNECT_TIMEOUT, **stranger) as env:
        assert env.reset(seed=0)[0].shape == (4,)


def test_half_a_key_pair_is_refused_naming_the_missing_one(keys: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="client_key"):
        rnp.RemoteEnv("127.0.0.1:1", server_key=keys["server_public"])
    with pytest.raises(ValueError, match="only a public key"):
        rnp.RemoteEnv("127.0.0.1:1", server_key=keys["server_public"], client_key=keys["client_public"])
    with pytest.raises(ValueError, match="authorized_keys"):
        EnvServer(gym.make("CartPole-v1"), server_key=keys["server_secret"])


def test_a_public_address_without_keys_is_refused_unless_insecure(keys: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"refusing to serve on tcp://0\.0\.0\.0:0 without keys.*insecure=True"):
        EnvServer(gym.make("CartPole-v1"), "tcp://0.0.0.0:0")
    with EnvServer(gym.make("CartPole-v1"), "tcp://0.0.0.0:0", insecure=True) as server:
        port = server.address.rsplit(":", 1)[1]
        with rnp.RemoteEnv(f"127.0.0.1:{port}") as env:
            assert env.reset(seed=0)[0].shape == (4,)
    with EnvServer(gym.make("CartPole-v1"), "tcp://0.0.0.0:0", server_key=keys["server_secret"],
                   authorized_keys=keys["authorized"]) as server:
        port = server.address.rsplit(":", 1)[1]
        with keyed_client(f"127.0.0.1:{port}", keys) as env:
            assert env.reset(seed=0)[0].shape == (4,)


def test_a_unix_socket_is_private_to_its_user(tmp_path: Path) -> None:
    with EnvServer(gym.make("CartPole-v1"), f"unix://{tmp_path / 'env.sock'}"):
        assert stat.S_IMODE(os.stat(tmp_path / "env.sock").st_mode) == 0o600


def test_strangers_garbage_and_churn_do_not_disturb_a_keyed_client(keyed_server: Any, keys: dict[str, Path]) -> None:
    host, port = keyed_server.address.removeprefix("tcp://").rsplit(":", 1)
    stop = threading.Event()
    errors: list[BaseException] = []
    steps = 0

    def step_meanwhile() -> None:
        nonlocal steps
        try:
            with keyed_client(keyed_server.address, keys) as env:
                env.reset(seed=0)
                while not stop.is_set():
                    _, _, terminated, truncated, _ = env.step(steps % 2)
                    if terminated or truncated:
                        env.reset()
                    steps += 1
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    stepper = threading.Thread(target=step_meanwhile)
    stepper.start()
    rng = random.Random(0)
    context = zmq.Context.instance()
    try:
        # 10,000 garbage frames: raw bytes on TCP (the server hangs up), and zmq frames from
        # peers whose handshake fails.
        for _ in range(100):
            try:
                with socket.create_connection((host, int(port)), timeout=5) as raw:
                    raw.sendall(rng.randbytes(rng.randint(1, 200)))
            except (ConnectionResetError, BrokenPipeError):
                pass
        for churn in range(300):  # 300 connections of peers without an authorized key
            peer = context.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            if churn % 2:
                peer.curve_serverkey = zmq.auth.load_certificate(str(keys["server_public"]))[0]
                peer.curve_publickey, peer.curve_secretkey = zmq.auth.load_certificate(str(keys["stranger_secret"]))
            peer.connect(keyed_server.address)
            for _ in range(33):
                try:  # writable can turn unwritable at once: the refused handshake drops the pipe
                    peer.send(rng.randbytes(16), zmq.NOBLOCK)
                except zmq.Again:
                    pass
            peer.close()
    finally:
        time.sleep(0.5)
        stop.set()
        stepper.join(30)
    assert not errors, errors
    assert steps > 100 and keyed_server.alive()


def test_model_run_takes_keys_for_an_address(keyed_server: Any, keys: dict[str, Path]) -> None:
    model = rnp.Model(lambda obs: 0)
    result = model.run(keyed_server.address, seeds=[5], max_steps=3,
                       server_key=keys["server_public"], client_key=keys["client_secret"])
    assert [episode.steps for episode in result.episodes] == [3]
    with pytest.raises(AuthenticationError, match="requires keys"):
        model.run(keyed_server.address, seeds=[5], max_steps=3)
    with keyed_client(keyed_server.address, keys) as env, pytest.raises(ValueError, match="apply when env is an address"):
        model.run(env, seeds=[5], server_key=keys["server_public"], client_key=keys["client_secret"])


def test_session_keys_pair_one_server_with_one_client(tmp_path: Path) -> None:
    keys = SessionKeys.new(tmp_path)
    # The server's secret never lands on the client's side, only the client's own pair does.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.key", "client.key_secret", "server.key"]
    server_folder = tmp_path / "handed-over"
    for name, data in keys.server_files.items():
        (server_folder / name).parent.mkdir(parents=True, exist_ok=True)
        (server_folder / name).write_bytes(data)
    server = ServerKeys.from_folder(server_folder)
    assert zmq.auth.load_certificate(str(keys.server_key)) == (server.public, None)
    client = ClientKeys.resolve(keys.server_key, keys.client_key)
    assert client is not None and client.server_public == server.public
    # Two sessions never share a key.
    assert SessionKeys.new(tmp_path / "other").server_files != keys.server_files


def test_new_keypair_leaves_the_process_umask_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The umask is process-wide: changing it, even briefly, gave files other threads were
    writing at that moment (a sandbox's build context) mode 0600."""
    from rlmesh.protocol.keys import new_keypair

    def no_umask(mask: int) -> int:
        raise AssertionError("new_keypair changed the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    public, secret = new_keypair("someone", tmp_path)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone.key", "someone.key_secret"]
