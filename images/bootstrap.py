"""Build a Debian + Python base image locally and import it into a container engine.

No registry is needed: a root filesystem is assembled from Debian's apt mirror with
``mmdebstrap`` (or ``debootstrap`` when mmdebstrap is absent), cached as a tarball, and handed
to :meth:`RuntimeDriver.import_image`. This is how machines without registry access (CI,
air-gapped clusters) get the image that sandbox recipes start ``FROM``.

Command line (used by ``.ci/engines.sh``)::

    python -m rlmesh_images.bootstrap --runtime docker
    python -m rlmesh_images.bootstrap --runtime podman --host unix:///run/podman/podman.sock
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from rlmesh.errors import ImageBuildError, RLMeshError, RuntimeUnavailableError
from rlmesh.runtime.driver import RuntimeDriver

__all__ = [
    "BASE_PACKAGES",
    "DEFAULT_BASE_IMAGE",
    "bootstrap",
    "build_rootfs",
    "debian_mirror",
    "default_base_image",
    "default_tarball",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_IMAGE = "rlmesh-base:bookworm"
#: Environment variable that overrides :data:`DEFAULT_BASE_IMAGE` everywhere.
BASE_IMAGE_ENV = "RLMESH_BASE_IMAGE"
#: What the base image holds beyond Debian's minimal base: Python able to make venvs, and CAs.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEFAULT_SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# Without this hook mmdebstrap's minbase on bookworm pulls perl in for usrmerge (+48 MB).
_MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"
_LOG_TAIL_LINES = 30


def default_base_image() -> str:
    """The base image recipes build on: ``$RLMESH_BASE_IMAGE`` or ``rlmesh-base:bookworm``."""
    return os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE


def default_tarball(suite: str = DEFAULT_SUITE) -> Path:
    """Where the rootfs tarball is cached: system-wide for root, per user otherwise."""
    if os.geteuid() == 0:
        cache = Path("/var/cache/rlmesh")
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlmesh"
    return cache / f"base-{suite}.tar"


def debian_mirror(
    sources: Sequence[Path] = (
        Path("/etc/apt/sources.list.d/debian.sources"),
        Path("/etc/apt/sources.list"),
    ),
    *,
    suite: str = DEFAULT_SUITE,
) -> str:
    """The host's Debian mirror for ``suite`` (so the build uses the same, reachable mirror)."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        mirror = _mirror_from_deb822(text, suite) or _mirror_from_one_line(text, suite)
        if mirror:
            return mirror
    return FALLBACK_MIRROR


def _mirror_from_deb822(text: str, suite: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields = {
            key.strip().lower(): value.strip()
            for key, sep, value in (line.partition(":") for line in stanza.splitlines())
            if sep and not key.startswith(("#", " ", "\t"))
        }
        if suite in fields.get("suites", "").split() and fields.get("uris"):
            return fields["uris"].split()[0]
    return None


def _mirror_from_one_line(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1]
    return None


def build_rootfs(
    out: Path,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    packages: Sequence[str] = BASE_PACKAGES,
    force: bool = False,
) -> Path:
    """Build a Debian ``suite`` root filesystem tarball with ``packages`` at ``out``.

    An existing ``out`` is reused unless ``force``; the tarball is written next to ``out`` first
    and renamed, so an interrupted build never leaves a truncated cache behind.
    """
    out = Path(out)
    if out.exists() and not force:
        log.info("reusing cached rootfs %s", out)
        return out
    mirror = mirror or debian_mirror(suite=suite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    started = time.monotonic()
    if shutil.which("mmdebstrap"):
        _run_logged(_mmdebstrap_command(partial, suite, mirror, packages), "mmdebstrap")
    elif shutil.which("debootstrap"):
        _debootstrap_tarball(partial, suite, mirror, packages)
    else:
        raise ImageBuildError(
            "cannot build the base image: neither mmdebstrap nor debootstrap is installed; "
            "install one with `apt-get install mmdebstrap`"
        )
    partial.replace(out)
    log.info(
        "built %s rootfs %s (%.0f MB) in %.1f s",
        suite, out, out.stat().st_size / 1e6, time.monotonic() - started,
    )
    return out


def _mmdebstrap_command(
    out: Path, suite: str, mirror: str, packages: Sequence[str]
) -> list[str]:
    command = ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}"]
    if Path(_MERGED_USR_HOOK).is_dir():
        command.append(f"--hook-dir={_MERGED_USR_HOOK}")
    # mmdebstrap picks the tar format from the output file's extension.
    return [*command, "--format=tar", suite, str(out), mirror]


def _debootstrap_tarball(out: Path, suite: str, mirror: str, packages: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="rlmesh-rootfs-", dir=out.parent) as root:
        _run_logged(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
             suite, root, mirror],
            "debootstrap",
        )
        _run_logged(["tar", "--numeric-owner", "-C", root, "-cf", str(out), "."], "tar")


def _run_logged(command: Sequence[str], what: str) -> None:
    log.info("running %s", " ".join(command))
    try:
        result = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
    except OSError as exc:
        raise ImageBuildError(f"could not run {what}: {exc}") from exc
    for line in result.stdout.splitlines():
        log.debug("%s: %s", what, line)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-_LOG_TAIL_LINES:])
        raise ImageBuildError(
            f"{what} failed with exit code {result.returncode} (is the Debian mirror reachable "
            f"and are you root?):\n{tail}",
            log=result.stdout,
        )


def bootstrap(
    driver: RuntimeDriver,
    tag: str | None = None,
    *,
    tarball: Path | None = None,
    suite: str = DEFAULT_SUITE,
    mirror: str | None = None,
    force: bool = False,
) -> str:
    """Make sure ``driver``'s engine has the base image ``tag``; return the tag.

    Skips everything when the image exists (unless ``force``); otherwise builds (or reuses) the
    cached rootfs tarball and imports it.
    """
    tag = tag or default_base_image()
    availability = driver.available()
    if not availability:
        raise RuntimeUnavailableError(
            f"cannot import the base image: runtime {driver.name!r} is not available: "
            f"{availability.reason}"
        )
    where = availability.version + (", rootless" if availability.rootless else "")
    if not force and driver.image_exists(tag):
        log.info("%s (%s) already has %s", driver.name, where, tag)
        return tag
    path = build_rootfs(tarball or default_tarball(suite), suite=suite, mirror=mirror, force=force)
    started = time.monotonic()
    driver.import_image(str(path), tag)
    log.info(
        "imported %s into %s (%s) in %.1f s", tag, driver.name, where, time.monotonic() - started
    )
    return tag


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rlmesh_images.bootstrap",
        description="Build a Debian + Python base image without a registry and import it.",
    )
    parser.add_argument("--runtime", help="runtime driver name (default: $RLMESH_RUNTIME or auto)")
    parser.add_argument("--host", help="engine socket URL, e.g. unix:///run/podman/podman.sock")
    parser.add_argument("--tag", help=f"image tag (default: ${BASE_IMAGE_ENV} or {DEFAULT_BASE_IMAGE})")
    parser.add_argument("--tarball", type=Path, help="rootfs tarball cache path")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help="Debian suite")
    parser.add_argument("--mirror", help="Debian mirror URL (default: the host's apt source)")
    parser.add_argument("--force", action="store_true", help="rebuild the rootfs and re-import")
    parser.add_argument(
        "--rootfs-only", action="store_true", help="only build the tarball, import nothing"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the build output")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        if args.rootfs_only:
            build_rootfs(
                args.tarball or default_tarball(args.suite),
                suite=args.suite, mirror=args.mirror, force=args.force,
            )
            return 0
        driver = _driver_from_args(args)
        try:
            bootstrap(
                driver, args.tag, tarball=args.tarball, suite=args.suite,
                mirror=args.mirror, force=args.force,
            )
        finally:
            driver.close()
    except RLMeshError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _driver_from_args(args: argparse.Namespace) -> RuntimeDriver:
    from rlmesh.runtime.discovery import get_driver

    options = {"host": args.host} if args.host else {}
    return get_driver(args.runtime, **options)


if __name__ == "__main__":
    sys.exit(main())
