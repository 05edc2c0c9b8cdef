"""Which rlmesh a sandbox installs, so that it speaks exactly the host's version.

``rlmesh_package`` may be a pip requirement (``"rlmesh==0.2.0"``), a wheel path, or ``"local"``
(build a wheel from the rlmesh checkout). Unset, the environment variable
``RLMESH_SANDBOX_RLMESH_PACKAGE`` decides; otherwise a host running from a checkout ships a
wheel built from that checkout, a released host installs the same release, and any other
unreleased host repackages its installed files as a wheel, so the handshake always matches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.version import Version

import rlmesh
from rlmesh._version import __version__
from rlmesh.errors import SandboxError

__all__ = ["RlmeshPackage", "resolve_rlmesh_package", "find_repo_root", "build_local_wheel"]

log = logging.getLogger(__name__)

ENV_VARIABLE = "RLMESH_SANDBOX_RLMESH_PACKAGE"
_RELEASE = re.compile(r"^\d+(\.\d+)*$")
# Fixed zip timestamps make the same source give a byte-identical wheel, so image caching works.
_SOURCE_DATE_EPOCH = "315532800"
_SOURCE_DIRS = ("rlmesh", "runtimes", "images")
_INSTALL_ONLY_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


@dataclass(frozen=True)
class RlmeshPackage:
    """Exactly one of a requirement string or a wheel file."""

    requirement: str | None = None
    wheel: Path | None = None


def find_repo_root(repo_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The rlmesh checkout: ``repo_root`` if given (validated), else the one this rlmesh runs from."""
    candidates = [Path(repo_root)] if repo_root is not None else [Path(rlmesh.__file__).resolve().parents[1]]
    for root in candidates:
        pyproject = root / "pyproject.toml"
        if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"rlmesh"', pyproject.read_text()):
            return root
        if repo_root is not None:
            raise SandboxError(f"repo_root {str(root)!r} is not an rlmesh checkout (no pyproject.toml "
                               "naming rlmesh)")
    return None


def _source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    for directory in _SOURCE_DIRS:
        files += sorted(p for p in (root / directory).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:24]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlmesh" / "wheels"


def _can_build_in_place() -> bool:
    """Whether this environment has a setuptools that builds wheels by itself (70.1 or newer).

    Then the build needs no network; a venv made by Python 3.11's ``venv`` holds setuptools 65,
    which cannot, so pip fetches the backend into an isolated build environment instead.
    """
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    return Version(version) >= Version("70.1")


def build_local_wheel(root: Path) -> Path:
    """Build (or reuse) a reproducible wheel of the checkout at ``root``."""
    target = _cache_dir() / _source_hash(root)
    existing = sorted(target.glob("rlmesh-*.whl")) if target.is_dir() else []
    if existing:
        return existing[0]
    log.info("building an rlmesh wheel from %s for the sandbox", root)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                   "--wheel-dir", scratch, str(root)]
        if _can_build_in_place():
            command.insert(5, "--no-build-isolation")
        env = {**os.environ, "SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        wheels = sorted(Path(scratch).glob("rlmesh-*.whl"))
        if result.returncode != 0 or not wheels:
            raise SandboxError(f"building the rlmesh wheel from {root} failed:\n"
                               f"{(result.stderr or result.stdout)[-2000:]}")
        target.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(wheels[0]), target / wheels[0].name))


def _installed_sources() -> dict[str, bytes] | None:
    """The files of the installed (non-editable) rlmesh distribution, wheel-relative; else None."""
    try:
        dist = metadata.distribution("rlmesh")
    except metadata.PackageNotFoundError:
        return None
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        return None  # an editable install holds no sources of its own
    contents: dict[str, bytes] = {}
    for entry in dist.files or []:
        name = entry.as_posix()
        if (name.startswith("..") or "__pycache__" in entry.parts or entry.suffix == ".pyc"
                or name.rsplit("/", 1)[-1] in _INSTALL_ONLY_FILES):
            continue  # scripts are regenerated from entry_points.txt; install records are redone
        contents[name] = Path(str(entry.locate())).read_bytes()
    has_code = any(name.startswith("rlmesh/") for name in contents)
    return contents if has_code else None


def wheel_from_installation(contents: dict[str, bytes]) -> Path:
    """Repackage installed rlmesh files as a reproducible wheel (same files, same version)."""
    digest = hashlib.sha256()
    for name in sorted(contents):
        digest.update(name.encode() + b"\0" + contents[name])
    target = _cache_dir() / f"installed-{digest.hexdigest()[:24]}"
    wheel = target / f"rlmesh-{__version__}-py3-none-any.whl"
    if wheel.is_file():
        return wheel
    dist_info = next(n.split("/")[0] for n in contents if n.split("/")[0].endswith(".dist-info"))
    record = [f"{name},sha256={_record_hash(data)},{len(data)}" for name, data in sorted(contents.items())]
    record.append(f"{dist_info}/RECORD,,")
    files = {**contents, f"{dist_info}/RECORD": ("\n".join(record) + "\n").encode()}
    target.mkdir(parents=True, exist_ok=True)
    scratch = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(scratch, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    scratch.replace(wheel)
    log.info("repackaged the installed rlmesh %s as %s for the sandbox", __version__, wheel)
    return wheel


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def resolve_rlmesh_package(
    rlmesh_package: str | os.PathLike[str] | None = None,
    *,
    repo_root: str | os.PathLike[str] | None = None,
) -> RlmeshPackage:
    """Decide what the sandbox installs; see the module docstring for the rules."""
    value = rlmesh_package if rlmesh_package is not None else os.environ.get(ENV_VARIABLE) or None
    if value is None:
        root = find_repo_root(repo_root) if repo_root is not None else find_repo_root()
        if root is not None:  # running from a checkout: ship exactly that source
            return RlmeshPackage(wheel=build_local_wheel(root))
        if _RELEASE.match(__version__):
            return RlmeshPackage(requirement=f"rlmesh=={__version__}")
        installed = _installed_sources()
        if installed is None:
            raise SandboxError(
                f"this host runs an unreleased rlmesh ({__version__}) whose files cannot be "
                "shipped; pass rlmesh_package='/path/to/rlmesh.whl' or repo_root='/path/to/rlmesh'"
            )
        return RlmeshPackage(wheel=wheel_from_installation(installed))
    if str(value) == "local":
        root = find_repo_root(repo_root)
        if root is None:
            raise SandboxError("rlmesh_package='local' needs an rlmesh checkout; pass repo_root=")
        return RlmeshPackage(wheel=build_local_wheel(root))
    if str(value).endswith(".whl"):
        wheel = Path(value).expanduser()
        if not wheel.is_file():
            raise SandboxError(f"rlmesh_package wheel {str(wheel)!r} does not exist")
        return RlmeshPackage(wheel=wheel.resolve())
    return RlmeshPackage(requirement=str(value))
