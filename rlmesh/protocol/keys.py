"""CurveZMQ keys for endpoints: who may attach, and encryption of everything on the wire.

Certificates are pyzmq's files (``zmq.auth.create_certificates``): ``NAME.key`` holds the
public key, ``NAME.key_secret`` both keys. A server takes its secret certificate and a folder of
client public certificates (``authorized_keys``, like SSH's); a client takes the server's public
certificate and its own secret one. The folder is read again whenever an unknown key knocks, so
adding or removing a file takes effect for the next connection, without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from rlmesh.errors import AuthenticationError

__all__ = [
    "SERVER_KEY_VARIABLE", "CLIENT_KEY_VARIABLE", "AUTHORIZED_KEYS_VARIABLE",
    "SERVER_SECRET_FILE", "AUTHORIZED_FOLDER",
    "ClientKeys", "ServerKeys", "SessionKeys", "new_keypair", "is_private_endpoint", "handshake_error",
]

log = logging.getLogger(__name__)

SERVER_KEY_VARIABLE = "RLMESH_SERVER_KEY"
CLIENT_KEY_VARIABLE = "RLMESH_CLIENT_KEY"
AUTHORIZED_KEYS_VARIABLE = "RLMESH_AUTHORIZED_KEYS"

#: A server's keys folder (see :meth:`ServerKeys.from_folder`): its secret certificate...
SERVER_SECRET_FILE = "server.key_secret"
#: ...and the folder of the clients it lets in.
AUTHORIZED_FOLDER = "authorized"


def new_keypair(name: str, directory: str | os.PathLike[str] = ".") -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    # zmq.auth writes with the default mode: write in a private (0700) folder, tighten the
    # modes, then move into place, so the secret is never readable by others, not even for a
    # moment. (Not os.umask: it is process-wide and would race with other threads' files.)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".keys-") as private:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(private, name))
        os.chmod(public, 0o644)
        os.chmod(secret, 0o600)
        os.replace(secret, folder / secret.name)
        os.replace(public, folder / public.name)
    return folder / public.name, folder / secret.name


def _load(path: str | os.PathLike[str], what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    file = Path(path).expanduser()
    try:
        public, secret_key = zmq.auth.load_certificate(str(file))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the {what} certificate {file}: {exc}; make a key pair with "
                         "`rlmesh keys new NAME`") from None
    if secret and secret_key is None:
        raise ValueError(f"{what} {file} holds only a public key; pass the secret certificate "
                         f"({file.name}_secret as written by `rlmesh keys new`)")
    return public, secret_key


def _given(value: str | os.PathLike[str] | None, variable: str) -> str | os.PathLike[str] | None:
    return value if value is not None else (os.environ.get(variable) or None)


@dataclass(frozen=True)
class ClientKeys:
    """The keys a client presents: the server's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes
    server_key_path: str
    client_key_path: str

    @classmethod
    def resolve(cls, server_key: str | os.PathLike[str] | ClientKeys | None,
                client_key: str | os.PathLike[str] | None) -> ClientKeys | None:
        """Keys from the arguments or ``$RLMESH_SERVER_KEY`` / ``$RLMESH_CLIENT_KEY``; ``None``: keyless.

        ``server_key`` may also be keys loaded already (another client's, see
        :attr:`rlmesh.sandbox.session.SandboxSessionBase.client_keys`).
        """
        if isinstance(server_key, ClientKeys):
            if client_key is not None:
                raise ValueError("keys loaded already (ClientKeys) carry the client's key too; "
                                 "pass no client_key with them")
            return server_key
        server_key = _given(server_key, SERVER_KEY_VARIABLE)
        client_key = _given(client_key, CLIENT_KEY_VARIABLE)
        if server_key is None and client_key is None:
            return None
        if server_key is None or client_key is None:
            missing = "server_key (the server's public certificate)" if server_key is None \
                else "client_key (this client's secret certificate)"
            raise ValueError(f"a keyed connection needs both keys; {missing} is missing "
                             f"(or set ${SERVER_KEY_VARIABLE} / ${CLIENT_KEY_VARIABLE})")
        server_public, _ = _load(server_key, "server_key", secret=False)
        public, secret = _load(client_key, "client_key", secret=True)
        assert secret is not None
        return cls(server_public, public, secret, str(server_key), str(client_key))

    def apply(self, socket: zmq.Socket[Any]) -> None:
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


class _AuthorizedKeys:
    """The ZAP credentials check: is this client key in the folder? Refusals are logged."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._keys = self._read()

    def _read(self) -> set[bytes]:
        if not self.folder.is_dir():
            raise ValueError(f"authorized_keys {self.folder} is not a folder; put the clients' public "
                             "certificates (NAME.key) in one")
        return set(zmq.auth.load_certificates(str(self.folder)))

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            if key not in self._keys:
                self._keys = self._read()  # a key added since: rotation without a restart
            allowed = key in self._keys
        if not allowed:
            log.warning("refused a client with key %s: not in authorized_keys %s",
                        key.decode(errors="replace"), self.folder)
        return allowed


class ServerKeys:
    """A server's secret certificate and the authenticator that checks its clients' keys."""

    def __init__(self, server_key: str | os.PathLike[str], authorized_keys: str | os.PathLike[str]) -> None:
        self.public, secret = _load(server_key, "server_key", secret=True)
        assert secret is not None
        self._secret = secret
        self._authorized = _AuthorizedKeys(Path(authorized_keys).expanduser())
        self._authenticator: ThreadAuthenticator | None = None

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> ServerKeys:
        """The keys in ``folder``: ``server.key_secret`` and the ``authorized`` clients."""
        return cls(Path(folder, SERVER_SECRET_FILE), Path(folder, AUTHORIZED_FOLDER))

    @classmethod
    def resolve(cls, server_key: str | os.PathLike[str] | None,
                authorized_keys: str | os.PathLike[str] | None) -> ServerKeys | None:
        """Keys from the arguments or ``$RLMESH_SERVER_KEY`` / ``$RLMESH_AUTHORIZED_KEYS``."""
        server_key = _given(server_key, SERVER_KEY_VARIABLE)
        authorized_keys = _given(authorized_keys, AUTHORIZED_KEYS_VARIABLE)
        if server_key is None:
            if authorized_keys is not None:
                raise ValueError("authorized_keys needs server_key (this server's secret certificate)")
            return None
        if authorized_keys is None:
            raise ValueError("server_key needs authorized_keys: a folder of the public certificates "
                             f"of the clients that may attach (or set ${AUTHORIZED_KEYS_VARIABLE})")
        return cls(server_key, authorized_keys)

    def apply(self, context: zmq.Context[Any], socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server whose clients ``context``'s authenticator checks."""
        self._authenticator = ThreadAuthenticator(context, log=log.getChild("zap"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", credentials_provider=self._authorized)
        socket.curve_secretkey = self._secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def close(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None


@dataclass(frozen=True)
class SessionKeys:
    """Fresh keys for one server and the one client that owns it, as a sandbox and its host use.

    The server's side is file contents to hand to the server (a keys folder, see
    :meth:`ServerKeys.from_folder`); its secret is never written on the client's host. The
    client's side is two certificate files in the folder given to :meth:`new`.
    """

    server_files: dict[str, bytes]
    server_key: Path
    client_key: Path

    @classmethod
    def new(cls, directory: str | os.PathLike[str]) -> SessionKeys:
        """Make both pairs; ``directory`` (private to this user) receives the client's files."""
        folder = Path(directory)
        server_public, server_secret = zmq.curve_keypair()
        client_public_file, client_secret_file = new_keypair("client", folder)
        server_files = {
            SERVER_SECRET_FILE: _certificate(server_public, server_secret),
            f"{AUTHORIZED_FOLDER}/client.key": client_public_file.read_bytes(),
        }
        server_key = folder / "server.key"
        server_key.write_bytes(_certificate(server_public))
        return cls(server_files, server_key, client_secret_file)


def _certificate(public: bytes, secret: bytes | None = None) -> bytes:
    """A certificate file's contents in pyzmq's format (what ``zmq.auth.load_certificate`` reads)."""
    lines = ["#   ZeroMQ CURVE certificate of one rlmesh session", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def is_private_endpoint(endpoint: str) -> bool:
    """Whether a zmq endpoint is reachable from this machine only: a unix socket or loopback."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or an interface: it may face a network
        return False


def _serves_keyless(endpoint: str, timeout: float = 1.0) -> bool:
    """Whether the peer at ``endpoint`` completes a handshake without keys (probed once)."""
    context: zmq.Context[Any] = zmq.Context.instance()
    probe = context.socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    monitor = probe.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                       | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    try:
        probe.connect(endpoint)
        if not monitor.poll(int(timeout * 1000)):
            return False
        return bool(parse_monitor_message(monitor.recv_multipart())["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED)
    finally:
        probe.disable_monitor()
        monitor.close(linger=0)
        probe.close(linger=0)


def handshake_error(event: int, value: int, endpoint: str, address: str,
                    keys: ClientKeys | None) -> AuthenticationError:
    """The error for a failed CURVE handshake seen by a client's socket monitor."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        assert keys is not None
        return AuthenticationError(
            f"the server at {address} refused this client's key ({keys.client_key_path}, public key "
            f"{keys.public.decode()}); add its public certificate to the server's authorized_keys "
            "folder, or pass a client_key it lists")
    if keys is None:  # a keyless client fails a handshake only against a keyed server
        return AuthenticationError(
            f"the server at {address} requires keys: pass server_key= (its public certificate) and "
            f"client_key= (this client's secret certificate, listed in its authorized_keys), or set "
            f"${SERVER_KEY_VARIABLE} and ${CLIENT_KEY_VARIABLE}")
    # A keyless server and a wrong server key look alike from here: ask the server without keys.
    if _serves_keyless(endpoint):
        return AuthenticationError(
            f"the server at {address} has no server key (it serves unencrypted); connect without "
            "server_key/client_key, or restart the server with server_key=")
    return AuthenticationError(
        f"the encrypted handshake with {address} failed: server_key {keys.server_key_path} is not "
        "the key of the server there; pass its public certificate")
