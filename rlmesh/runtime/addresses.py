"""Where a started container's ports can be reached, read from Docker-compatible inspect data.

Docker and Podman both publish a container port on a loopback host port. On a Linux host with a
rootful engine the container's bridge address is reachable too, and connecting there skips the
engine's port forwarding (docker-proxy copies every byte through a userspace process, which adds
about 150 us to each request/reply round trip). So the bridge address is used when this host
routes to it through the bridge's own gateway interface, and the published port otherwise
(rootless engines, Docker Desktop, remote daemons: their bridges live elsewhere).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlmesh.errors import ContainerError

__all__ = ["container_addresses"]

log = logging.getLogger(__name__)


def container_addresses(
    attrs: Mapping[str, Any],
    ports: Sequence[int],
    *,
    engine: str,
    logs: Callable[[], str],
    try_bridge: bool,
) -> dict[int, str]:
    """``{container port: "tcp://HOST:PORT"}`` for a started container.

    ``try_bridge=False`` (rootless engines, whose bridge is never this host's) skips the
    route lookup.

    Raises :class:`ContainerError` (with the container's log tail) when a port was not
    published, which means the container exited at once.
    """
    if try_bridge and ports:
        for ip, gateway in _bridges(attrs):
            if _routes_through(ip, gateway):
                log.debug("%s: reaching container %s at its bridge address %s", engine,
                          str(attrs.get("Id", ""))[:12], ip)
                return {port: f"tcp://{ip}:{port}" for port in ports}
    return _published(attrs, ports, engine=engine, logs=logs)


def _published(attrs: Mapping[str, Any], ports: Sequence[int], *, engine: str,
               logs: Callable[[], str]) -> dict[int, str]:
    bound = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    addresses: dict[int, str] = {}
    for port in ports:
        bindings = bound.get(f"{port}/tcp") or []
        if not bindings:
            state = attrs.get("State") or {}
            raise ContainerError(
                f"{engine}: container {str(attrs.get('Id', ''))[:12]} has no host port for "
                f"{port}/tcp (state {state.get('Status')!r}, exit code {state.get('ExitCode')}); "
                "it probably exited at once, see its logs.",
                exit_code=state.get("ExitCode"),
                logs=logs(),
            )
        host_ip = bindings[0].get("HostIp") or "127.0.0.1"
        addresses[port] = f"tcp://{host_ip}:{bindings[0]['HostPort']}"
    return addresses


def _bridges(attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(container IP, gateway IP) for each network the container is on."""
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return [(str(net["IPAddress"]), str(net["Gateway"])) for net in networks.values()
            if isinstance(net, Mapping) and net.get("IPAddress") and net.get("Gateway")]


def _routes_through(ip: str, gateway: str) -> bool:
    """Whether this host sends packets for ``ip`` from the bridge's gateway address.

    That is true only when the bridge is one of this host's own interfaces. Connecting a UDP
    socket asks the kernel for the route without sending anything.
    """
    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((ip, 9))
            return bool(probe.getsockname()[0] == gateway)
    except OSError:  # no route at all
        return False
