"""Exception types raised by rlmesh. Each message names the problem and the fix."""

from __future__ import annotations

__all__ = [
    "RLMeshError",
    "ProtocolError",
    "VersionMismatchError",
    "EnvironmentException",
    "ServerBusyError",
    "AuthenticationError",
    "RuntimeDriverError",
    "RuntimeUnavailableError",
    "ImageBuildError",
    "ContainerError",
    "SandboxCrashed",
    "SandboxError",
    "SourceError",
    "PackageSpecError",
    "ModelError",
    "SpecMismatchError",
    "AlreadyPendingCallError",
    "NoAsyncCallError",
]


class RLMeshError(Exception):
    """Base class of every rlmesh-specific error."""


class ProtocolError(RLMeshError):
    """A peer sent something that is not a valid rlmesh message."""


class VersionMismatchError(ProtocolError):
    """Client and server speak different protocol generations or package versions."""


class ServerBusyError(RLMeshError, ConnectionError):
    """The server already serves another client."""


class AuthenticationError(RLMeshError, ConnectionError):
    """The encrypted handshake failed: a key is wrong, missing, or not authorized by the server."""


class EnvironmentException(RLMeshError):
    """The remote environment raised; ``remote_traceback`` holds the server-side traceback."""

    def __init__(self, message: str, *, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class RuntimeDriverError(RLMeshError):
    """A container engine operation failed; the engine's own message is included."""


class RuntimeUnavailableError(RuntimeDriverError):
    """No usable runtime driver (unknown name, missing package, or engine not running)."""


class ImageBuildError(RuntimeDriverError):
    """An image build failed; ``log`` holds the build output."""

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class ContainerError(RuntimeDriverError):
    """A container exited or misbehaved; carries its exit code and last log lines."""

    def __init__(self, message: str, *, exit_code: int | None = None, logs: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.logs = logs


class SandboxCrashed(ContainerError, ConnectionError):
    """A sandbox's container died while in use (a crash in native code, the OOM killer, an exit).

    Raised by the call that was waiting on it; carries the exit code, whether the engine reports
    an OOM kill (``oom_killed``) and the last lines of the container's log. The container has
    been removed by then.
    """

    def __init__(self, message: str, *, exit_code: int | None = None, oom_killed: bool = False,
                 logs: str = "") -> None:
        super().__init__(message, exit_code=exit_code, logs=logs)
        self.oom_killed = oom_killed


class SandboxError(RLMeshError):
    """A sandbox session could not be created or started."""


class SourceError(SandboxError, ValueError):
    """A sandbox source string is malformed, unpinned or untrusted."""


class PackageSpecError(SandboxError, ValueError):
    """A package spec, import name or image name for a sandbox image is malformed or not allowed."""


class ModelError(RLMeshError):
    """A model's policy raised during a run; names the episode and step, the cause is chained."""

    def __init__(self, message: str, *, episode: int | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.episode = episode
        self.step = step


class SpecMismatchError(RLMeshError, ValueError):
    """What a model expects (its ``ModelSpec``) does not fit the env's spaces."""


class AlreadyPendingCallError(RLMeshError):
    """An async call (``step_async``, ``reset_async``, lanes sent with ``send``) is under way.

    ``name`` is the call that is pending. Where Gymnasium is installed the error raised is also a
    ``gymnasium.error.AlreadyPendingCallError``, so code written for Gymnasium's async vector
    envs catches it unchanged.
    """

    def __init__(self, message: str, name: str) -> None:
        Exception.__init__(self, message)  # not super(): Gymnasium's twin takes (message, name)
        self.name = name


class NoAsyncCallError(RLMeshError):
    """A ``*_wait`` (or ``recv``) without the async call it collects; like Gymnasium's error of that name."""

    def __init__(self, message: str, name: str) -> None:
        Exception.__init__(self, message)
        self.name = name
