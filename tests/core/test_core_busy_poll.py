"""The server's busy poll: results do not depend on it, it returns what arrives, and it turns off."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import zmq

import rlmesh.numpy as rnp
from rlmesh import EnvServer
from rlmesh.protocol.endpoint import _spin_recv, _usable_cpus


@pytest.mark.parametrize("busy_poll", [0.0, 0.05])
def test_steps_match_a_local_env_with_and_without_busy_poll(spawn_server: Any, clients: Any,
                                                            busy_poll: float) -> None:
    server = spawn_server("cartpole", busy_poll=busy_poll)
    remote = clients(rnp.RemoteEnv, server.address)
    local = gym.make("CartPole-v1")
    got = remote.reset(seed=3)[0]
    want = local.reset(seed=3)[0]
    np.testing.assert_array_equal(got, want)
    for step in range(60):
        if step % 10 == 9:
            time.sleep(0.08)  # slower than the poll window: the server falls back to sleeping
        action = step % 2
        got, want = remote.step(action), local.step(action)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1:4] == want[1:4]
        if got[2] or got[3]:
            remote.reset(seed=step)
            local.reset(seed=step)


def test_spin_receive_returns_a_message_that_arrives_while_polling() -> None:
    context = zmq.Context.instance()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        later = threading.Timer(0.05, dealer.send_multipart, args=([b"step", b"7"],))
        later.start()
        begin = time.monotonic()
        frames = _spin_recv(router, spin_ns=5_000_000_000)
        assert frames is not None
        assert [f.bytes for f in frames[1:]] == [b"step", b"7"]
        assert time.monotonic() - begin < 4.0  # returned on arrival, not at the window's end
        begin = time.monotonic()
        assert _spin_recv(router, spin_ns=20_000_000) is None  # nothing more: gives up
        assert 0.015 < time.monotonic() - begin < 2.0
        later.join()
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


def test_negative_busy_poll_is_refused() -> None:
    with pytest.raises(ValueError, match="busy_poll must be >= 0"):
        EnvServer(gym.make("CartPole-v1"), busy_poll=-1)


def test_busy_poll_is_off_on_a_single_cpu() -> None:
    code = ("import os, gymnasium as gym; from rlmesh import EnvServer\n"
            "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "server = EnvServer(gym.make('CartPole-v1'), busy_poll=0.001)\n"
            "print(server.busy_poll); server.shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.0"


@pytest.mark.parametrize(("files", "limit"), [
    ({"cpu.max": "50000 100000\n"}, 0.5),  # cgroup v2, docker --cpus 0.5
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_a_cgroup_cpu_quota_caps_the_usable_cpus(tmp_path: Path, files: dict[str, str],
                                                 limit: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = float(len(os.sched_getaffinity(0)))
    assert _usable_cpus(str(tmp_path)) == (affinity if limit is None else min(affinity, limit))
