"""The request/reply protocol between :class:`~rlmesh.server.EnvServer` and remote clients.

Every message is a list of zmq frames: a codec header followed by raw array frames.
Requests are ``[kind, request_id, session, payload]``; replies are
``[status, request_id, payload]`` where status is ``"ok"`` or ``"error"``. An error payload is
``{"kind": ..., "type": ..., "message": ..., "traceback": ...}``.

The handshake (``hello``) exchanges :data:`PROTOCOL_GENERATION` and the package version. Both
must match: a mismatch fails the connect with a message naming both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from rlmesh.errors import ProtocolError
from rlmesh.wire.spaces import SpaceSpec, spec_from_wire, spec_to_wire

__all__ = ["PROTOCOL_GENERATION", "EnvContract", "Request", "REPLY_FIELDS", "MODEL_KIND", "ErrorKind", "send_frames", "recv_frames",
           "frame_contents"]

#: Bumped whenever the wire format changes incompatibly.
PROTOCOL_GENERATION: Final = 1


# Plain ints: pyzmq's flag enums cost a few microseconds per operation, on every step.
_SNDMORE: Final = int(zmq.SNDMORE)


def send_frames(socket: zmq.Socket[Any], frames: list[Any]) -> None:
    """Send one multipart message; frames of 64 KiB and more go without a copy."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        socket.send(frame, _SNDMORE if index < last else 0, copy=False)


def recv_frames(socket: zmq.Socket[Any], flags: int = 0) -> list[zmq.Frame]:
    """Receive one multipart message without copying its frames.

    pyzmq's ``recv_multipart`` asks ``RCVMORE`` through an enum conversion per frame; each
    frame already knows whether more follow.
    """
    frame = socket.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(flags, copy=False)
        frames.append(frame)
    return frames


def frame_contents(frames: list[zmq.Frame]) -> list[Any]:
    """What the codec decodes: the header as bytes, raw array frames as writable buffers."""
    if len(frames) == 1:
        return [frames[0].bytes]
    return [frames[0].bytes, *[frame.buffer for frame in frames[1:]]]


class Request:
    """Request kinds."""

    HELLO: Final = "hello"
    RESET: Final = "reset"
    STEP: Final = "step"
    RENDER: Final = "render"
    CALL: Final = "call"  # a method or attribute of the env (of every lane of a vector env)
    SET_ATTR: Final = "set_attr"
    CLOSE: Final = "close"
    HEARTBEAT: Final = "heartbeat"  # one-way, never answered
    PREDICT: Final = "predict"  # model endpoints only
    DECLINE: Final = "decline"  # one-way: the client stays on zmq rather than take the offered channel


#: ``kind`` in a model endpoint's handshake (env endpoints send an env contract instead).
MODEL_KIND: Final = "model"

#: Names of the items of list-shaped ``ok`` payloads, for messages about a part of a reply.
REPLY_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    Request.RESET: ("observation", "info"),
    Request.STEP: ("observation", "reward", "terminated", "truncated", "info"),
}


class ErrorKind:
    """Error reply kinds; the client maps each to an exception type."""

    ENVIRONMENT: Final = "environment"
    INVALID_ACTION: Final = "invalid_action"
    PROTOCOL: Final = "protocol"
    VERSION: Final = "version"
    BUSY: Final = "busy"
    NOT_ATTACHED: Final = "not_attached"
    REFUSED: Final = "refused"  # the server does not allow this call (allow_calls, a private name)
    NO_ATTRIBUTE: Final = "no_attribute"  # the env has no attribute of the name asked for


@dataclass(frozen=True)
class EnvContract:
    """What an endpoint serves: kind, spaces, metadata and identity, fixed at connect time."""

    vector: bool
    num_envs: int
    observation_space: SpaceSpec
    action_space: SpaceSpec
    single_observation_space: SpaceSpec
    single_action_space: SpaceSpec
    metadata: Mapping[str, Any] = field(default_factory=dict)
    render_mode: str | None = None
    env_id: str | None = None
    autoreset_mode: str | None = None
    server_version: str = ""
    protocol: int = PROTOCOL_GENERATION

    def to_wire(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "num_envs": self.num_envs,
            "observation_space": spec_to_wire(self.observation_space),
            "action_space": spec_to_wire(self.action_space),
            "single_observation_space": spec_to_wire(self.single_observation_space),
            "single_action_space": spec_to_wire(self.single_action_space),
            "metadata": dict(self.metadata),
            "render_mode": self.render_mode,
            "env_id": self.env_id,
            "autoreset_mode": self.autoreset_mode,
            "server_version": self.server_version,
            "protocol": self.protocol,
        }

    @classmethod
    def from_wire(cls, data: Any) -> EnvContract:
        try:
            return cls(
                vector=bool(data["vector"]),
                num_envs=int(data["num_envs"]),
                observation_space=spec_from_wire(data["observation_space"]),
                action_space=spec_from_wire(data["action_space"]),
                single_observation_space=spec_from_wire(data["single_observation_space"]),
                single_action_space=spec_from_wire(data["single_action_space"]),
                metadata=dict(data["metadata"]),
                render_mode=data["render_mode"],
                env_id=data["env_id"],
                autoreset_mode=data["autoreset_mode"],
                server_version=str(data["server_version"]),
                protocol=int(data["protocol"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed environment contract: {exc}") from exc
