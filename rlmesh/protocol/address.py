"""Endpoint addresses: the forms users write, and the zmq endpoints they mean.

Accepted: ``tcp://HOST:PORT``, ``HOST:PORT``, a bare port (``5555`` or ``"5555"``, meaning
loopback), ``unix:///path/to.sock`` (also ``ipc://``), or the keyword helpers
``host=/port=/path=/transport=``. Port 0 asks the server to pick a free port.
"""

from __future__ import annotations

import re

__all__ = ["to_zmq_endpoint", "to_user_address", "DEFAULT_HOST", "TRANSPORTS", "channel_mode"]

DEFAULT_HOST = "127.0.0.1"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\s]+):(?P<port>\d+)$")


#: What ``transport=`` accepts: how requests travel (``auto``: zmq, switched to shared memory
#: when both ends share a host; ``zmq``: never shared memory; ``shm``: shared memory or an error)
#: and, for the host/port/path helpers, which socket kind to use.
TRANSPORTS = ("auto", "zmq", "shm", "tcp", "unix", "ipc")
_SOCKET_KINDS = ("tcp", "unix", "ipc")


def channel_mode(transport: str | None) -> str:
    """``auto``, ``zmq`` or ``shm``: whether requests may, may not or must use shared memory."""
    if transport is None or transport in _SOCKET_KINDS:
        return "auto"
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}")
    return transport


def _port(value: int | str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return port


def to_zmq_endpoint(
    address: str | int | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    path: str | None = None,
    transport: str | None = None,
) -> str:
    """Normalise any accepted address form to a zmq endpoint (``tcp://`` or ``ipc://``)."""
    channel_mode(transport)  # refuse what is neither a socket kind nor a channel mode
    if address is None:
        if path is not None or transport in ("unix", "ipc"):
            if not path:
                raise ValueError("a unix-socket address needs path=")
            return f"ipc://{path}"
        if port is None:
            raise ValueError("give an address such as 'tcp://127.0.0.1:5555', or port=")
        return f"tcp://{host or DEFAULT_HOST}:{_port(port)}"
    if isinstance(address, int):
        return f"tcp://{DEFAULT_HOST}:{_port(address)}"
    text = address.strip()
    if text.startswith(("unix://", "ipc://")):
        socket_path = text.split("://", 1)[1]
        if not socket_path:
            raise ValueError(f"unix address {address!r} has no path; use 'unix:///tmp/env.sock'")
        return f"ipc://{socket_path}"
    if text.startswith("tcp://"):
        text = text[len("tcp://"):]
    elif "://" in text:
        raise ValueError(f"unsupported address scheme in {address!r}; use tcp:// or unix://")
    if text.isdigit():
        return f"tcp://{DEFAULT_HOST}:{_port(text)}"
    match = _HOST_PORT.match(text)
    if not match:
        raise ValueError(
            f"cannot parse address {address!r}; expected 'tcp://HOST:PORT', 'HOST:PORT', "
            "a port number, or 'unix:///path.sock'"
        )
    return f"tcp://{match['host']}:{_port(match['port'])}"


def to_user_address(endpoint: str) -> str:
    """The form users write for a zmq endpoint (``ipc://`` shows as ``unix://``)."""
    return "unix://" + endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else endpoint
