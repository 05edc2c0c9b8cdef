"""Secret files a container gets at start: never in its image, its environment or its command line.

A driver copies :attr:`RunSpec.secret_files` into the created container, under
:data:`SECRETS_DIR`, before starting it. The folder is mode 0700 and each file 0400, owned by
:attr:`RunSpec.secret_owner`, so only the container's user reads them; ``inspect`` shows nothing.
Runtimes without containers (Ray) write them to a private folder of the worker instead.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from rlmesh.errors import RuntimeDriverError

__all__ = ["SECRETS_DIR", "secrets_archive", "write_secrets"]

#: Where secret files appear inside a container.
SECRETS_DIR = "/run/rlmesh-secrets"


def _checked(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise RuntimeDriverError(f"invalid secret file name {name!r}: use a relative path without '..'")
    return path


def secrets_archive(files: Mapping[str, bytes], owner: int) -> bytes:
    """A tar of ``files`` under ``rlmesh-secrets/``, to unpack in ``/run`` (see :data:`SECRETS_DIR`)."""
    root = PurePosixPath(SECRETS_DIR).name
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        folders = {PurePosixPath(root)} | {PurePosixPath(root, *_checked(n).parts[:i])
                                          for n in files for i in range(1, len(_checked(n).parts))}
        for folder in sorted(folders):
            info = tarfile.TarInfo(str(folder))
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o700, owner, owner
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(str(PurePosixPath(root, _checked(name))))
            info.size, info.mode, info.uid, info.gid = len(files[name]), 0o400, owner, owner
            tar.addfile(info, io.BytesIO(files[name]))
    return buffer.getvalue()


def write_secrets(files: Mapping[str, bytes], folder: Path) -> Path:
    """Write ``files`` into ``folder``, made new and private (0700, files 0600); return it."""
    folder.mkdir(mode=0o700)
    for name, data in files.items():
        target = folder.joinpath(*_checked(name).parts)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
    return folder
