"""Choosing between a container's bridge address and its published port (no engine needed)."""

from __future__ import annotations

from typing import Any

import pytest

from rlmesh.errors import ContainerError
from rlmesh.runtime.addresses import container_addresses


def inspect_data(bridge_ip: str, gateway: str, host_port: int) -> dict[str, Any]:
    return {
        "Id": "0123456789abcdef",
        "NetworkSettings": {
            "Ports": {"7000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]},
            "Networks": {"bridge": {"IPAddress": bridge_ip, "Gateway": gateway}},
        },
    }


def no_logs() -> str:
    return ""


def test_a_bridge_on_this_host_is_used() -> None:
    # Loopback stands in for a local bridge: this host sends to 127.0.0.2 from 127.0.0.1.
    attrs = inspect_data("127.0.0.2", "127.0.0.1", 49000)
    addresses = container_addresses(attrs, [7000], engine="docker", logs=no_logs, try_bridge=True)
    assert addresses == {7000: "tcp://127.0.0.2:7000"}


def test_a_bridge_elsewhere_falls_back_to_the_published_port() -> None:
    # A gateway that is not the address this host sends from: the bridge lives in another
    # network namespace or machine (rootless engine, Docker Desktop, remote daemon).
    attrs = inspect_data("127.0.0.2", "10.88.0.1", 49001)
    addresses = container_addresses(attrs, [7000], engine="docker", logs=no_logs, try_bridge=True)
    assert addresses == {7000: "tcp://127.0.0.1:49001"}


def test_rootless_engines_use_the_published_port_without_probing() -> None:
    attrs = inspect_data("127.0.0.2", "127.0.0.1", 49002)
    addresses = container_addresses(attrs, [7000], engine="podman", logs=no_logs, try_bridge=False)
    assert addresses == {7000: "tcp://127.0.0.1:49002"}


def test_a_missing_published_port_is_a_container_error_with_logs() -> None:
    attrs = {"Id": "0123456789abcdef", "State": {"Status": "exited", "ExitCode": 3},
             "NetworkSettings": {"Ports": {}}}
    with pytest.raises(ContainerError, match="has no host port for 7000/tcp") as caught:
        container_addresses(attrs, [7000], engine="docker", logs=lambda: "boom", try_bridge=True)
    assert caught.value.exit_code == 3 and caught.value.logs == "boom"
