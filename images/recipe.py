"""The one Dockerfile generator: base image + pip packages + import checks + rlmesh -> recipe.

Every runtime driver builds what this module emits, so the rules live here once:

* Deterministic: the same inputs give a byte-identical Dockerfile and context, hence the same
  content-hash tag, so a driver skips a build whose image already exists.
* Layers go from least to most likely to change (base, CA certificates, venv and user, user
  packages, rlmesh, import checks, app files) so editing app files reuses the package layers.
* Nothing user-supplied ever reaches a shell: every ``RUN`` uses the JSON exec form, and package
  specs, import names and paths are validated before they are written (see
  :func:`validate_package_spec`). The legacy builder is enough (no ``RUN --mount``).
* Packages go into a venv (Debian's Python refuses system-wide pip, PEP 668) that is first on
  ``PATH``; the image runs as a non-root user with ``CMD ["python"]`` and no entrypoint script:
  the sandbox passes its command at run time and the engine's ``--init`` handles signals.
"""

from __future__ import annotations

import importlib.resources
import json
import keyword
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from rlmesh_images.bootstrap import default_base_image

from rlmesh.errors import PackageSpecError
from rlmesh.runtime.driver import ImageRecipe

__all__ = [
    "APP_DIR",
    "HOST_CA_CERT_DIR",
    "SANDBOX_USER",
    "VENV_DIR",
    "is_image_name",
    "sandbox_recipe",
    "validate_image_name",
    "validate_import_name",
    "validate_package_spec",
    "validate_system_package",
]

VENV_DIR = "/opt/rlmesh/venv"
APP_DIR = "/opt/rlmesh/app"
SANDBOX_USER = "rlmesh"
SANDBOX_UID = 10001
#: Extra CA certificates of the host (an intercepting proxy's CA, a corporate CA); copied into
#: the build context at generation time so pip inside the build trusts the same roots.
HOST_CA_CERT_DIR = Path("/usr/local/share/ca-certificates")

_IMPORT_CHECK = "/opt/rlmesh/import_check.py"
_APT_INSTALL = "/opt/rlmesh/apt_install.sh"
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_VENV_PYTHON = f"{VENV_DIR}/bin/python"
# Spelled out because an imported rootfs image has no PATH of its own to extend.
_PATH = f"{VENV_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_EXAMPLE = "e.g. 'gymnasium==1.3.0' or 'numpy>=1.24,<3'"

# PEP 508 pieces, restricted to what a plain requirement needs (no whitespace).
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_EXTRAS = rf"\[{_NAME}(?:,{_NAME})*\]"
_VERSION_CLAUSE = r"(?:===|~=|==|!=|<=|>=|<|>)[A-Za-z0-9.*+!_-]+"
_REQUIREMENT = re.compile(rf"{_NAME}(?:{_EXTRAS})?(?:{_VERSION_CLAUSE}(?:,{_VERSION_CLAUSE})*)?")
_URL_REQUIREMENT = re.compile(
    rf"(?P<name>{_NAME}(?:{_EXTRAS})?)\s*@\s*(?P<url>https://[A-Za-z0-9._~:/?#@%+=-]+)"
)
_MARKER_VARIABLES = frozenset({
    "python_version", "python_full_version", "os_name", "sys_platform", "platform_release",
    "platform_system", "platform_version", "platform_machine", "platform_python_implementation",
    "implementation_name", "implementation_version", "extra",
})
_MARKER_TOKEN = re.compile(
    r"""\s+|[()]|===|==|!=|<=|>=|~=|<|>|'[A-Za-z0-9._+*!~ -]*'|"[A-Za-z0-9._+*!~ -]*"|[a-z_]+"""
)
_MARKER_WORDS = frozenset({"and", "or", "in", "not"})
_SHELL_METACHARACTERS = frozenset("`$&|;(){}\\'\"#*?!<>~")
_IMAGE_NAME = re.compile(
    r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?"  # registry host
    r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"  # tag, digest
)
_WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+!-]+\.whl")


_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+~:-]+)?")


def validate_system_package(name: str) -> str:
    """Return ``name`` if it is a Debian package name, optionally ``:arch`` and ``=version``.

    Anything else (an option such as ``-o``, spaces, shell metacharacters, upper case) raises
    :class:`PackageSpecError` before any build.
    """
    if not isinstance(name, str):
        raise PackageSpecError(f"system package must be a string, got {type(name).__name__}")
    if not _DEBIAN_PACKAGE.fullmatch(name):
        why = ("is an option, not a package" if name.lstrip().startswith("-")
               else "is not a Debian package name (lower-case letters, digits, '+', '-', '.'; "
                    "optionally :arch and =version)")
        raise PackageSpecError(f"system package {name!r} {why}; e.g. 'libosmesa6' or 'ffmpeg=7:5.1.6-0+deb12u1'")
    return name


def validate_package_spec(spec: str, *, allow_urls: bool = False) -> str:
    """Return ``spec`` (outer whitespace stripped) if it is a safe PEP 508 requirement.

    Accepted: a name with optional extras and version clauses and no spaces
    (``gymnasium[classic-control]==1.3.0``), optionally followed by ``;`` and an environment
    marker (``pkg; python_version > "3.8"``); ``name @ https://...`` only with ``allow_urls``.
    Rejected with :class:`PackageSpecError`: control characters such as newlines, pip options
    (``--index-url``, ``-e``, ``-r``), shell metacharacters, spaces, and anything else that is
    not a plain requirement.
    """
    if not isinstance(spec, str):
        raise PackageSpecError(f"package spec must be a string, got {type(spec).__name__}")
    if any(ord(char) < 32 or ord(char) == 127 for char in spec):
        raise PackageSpecError(
            f"package spec {spec!r} contains a newline or control character: "
            f"give one requirement per list item, {_EXAMPLE}"
        )
    text = spec.strip()
    if not text:
        raise PackageSpecError(f"empty package spec: give a requirement, {_EXAMPLE}")
    if text.startswith("-"):
        raise PackageSpecError(
            f"package spec {spec!r} is a pip option: options such as --index-url, -e or -r are "
            f"not accepted in a package list, only requirements, {_EXAMPLE}"
        )
    requirement, semicolon, marker = text.partition(";")
    requirement = requirement.strip()
    if "://" in requirement or "@" in requirement:
        requirement = _validate_url_requirement(spec, requirement, allow_urls)
    elif not _REQUIREMENT.fullmatch(requirement):
        raise PackageSpecError(f"package spec {spec!r} {_why_not_requirement(requirement)}")
    if not semicolon:
        return requirement
    marker = marker.strip()
    _validate_marker(spec, marker)
    return f"{requirement}; {marker}"


def _validate_url_requirement(spec: str, requirement: str, allow_urls: bool) -> str:
    if not allow_urls:
        raise PackageSpecError(
            f"package spec {spec!r} is a direct URL requirement, which is not allowed here: "
            f"use a released version from the package index, {_EXAMPLE}"
        )
    match = _URL_REQUIREMENT.fullmatch(requirement)
    if not match:
        raise PackageSpecError(
            f"package spec {spec!r} is not of the form 'name @ https://host/path' "
            "(https only; no spaces, quotes or shell metacharacters in the URL)"
        )
    return f"{match['name']} @ {match['url']}"


def _why_not_requirement(requirement: str) -> str:
    # Metacharacters first: they say more about what went wrong than the spaces around them.
    for char in requirement:
        if char in _SHELL_METACHARACTERS and char not in "<>*!~":
            return f"contains the shell metacharacter {char!r}; give a plain requirement, {_EXAMPLE}"
    if any(char.isspace() for char in requirement):
        return (
            "contains a space; write the requirement without spaces "
            f"(only an environment marker after ';' may have them), {_EXAMPLE}"
        )
    return f"is not a valid requirement (name, optional [extras], version clauses), {_EXAMPLE}"


def _validate_marker(spec: str, marker: str) -> None:
    position = 0
    compared = False
    while position < len(marker):
        match = _MARKER_TOKEN.match(marker, position)
        if not match:
            raise PackageSpecError(
                f"package spec {spec!r} has an invalid environment marker at "
                f"{marker[position:]!r}: markers use PEP 508 variables, comparison operators and "
                "quoted literals, e.g. 'pkg; python_version > \"3.8\"'"
            )
        token = match.group()
        if token[0].isalpha() or token[0] == "_":
            if token not in _MARKER_VARIABLES and token not in _MARKER_WORDS:
                raise PackageSpecError(
                    f"package spec {spec!r} uses {token!r} in its environment marker, which is "
                    f"not a PEP 508 marker variable ({', '.join(sorted(_MARKER_VARIABLES))})"
                )
        elif token[0] in "<>=!~" or token == "in":
            compared = True
        position = match.end()
    if not compared:
        raise PackageSpecError(
            f"package spec {spec!r} has an environment marker without a comparison, "
            "e.g. 'pkg; python_version > \"3.8\"'"
        )


def validate_import_name(name: str) -> str:
    """Return ``name`` if it is a dotted Python module path such as ``gymnasium.envs``."""
    parts = name.split(".") if isinstance(name, str) else []
    if not parts or not all(part.isidentifier() and not keyword.iskeyword(part) for part in parts):
        raise PackageSpecError(
            f"import name {name!r} is not a dotted module path of Python identifiers, "
            "e.g. 'gymnasium' or 'gymnasium.envs.classic_control'"
        )
    return name


def is_image_name(name: object) -> bool:
    """Whether ``name`` is a plain image reference: ``[registry[:port]/]path[:tag][@digest]``,
    with nothing a shell or a Dockerfile would read as more."""
    return isinstance(name, str) and _IMAGE_NAME.fullmatch(name) is not None


def validate_image_name(name: str) -> str:
    """Return ``name`` if it is a plain image reference such as ``rlmesh-base:bookworm``."""
    if not is_image_name(name):
        raise PackageSpecError(
            f"base image {name!r} is not an image reference like 'rlmesh-base:bookworm' or "
            "'registry.example.com/team/python:3.11'"
        )
    return name


def sandbox_recipe(
    *,
    base_image: str | None = None,
    packages: Sequence[str] = (),
    imports: Sequence[str] = (),
    rlmesh_requirement: str | None = None,
    rlmesh_wheel: Path | None = None,
    app_files: Mapping[str, bytes] | None = None,
    labels: Mapping[str, str] | None = None,
    system_packages: Sequence[str] = (),
    allow_urls: bool = False,
    ca_cert_dir: Path | None = HOST_CA_CERT_DIR,
    repository: str = "rlmesh-sandbox",
) -> ImageRecipe:
    """Generate the image recipe of a sandbox.

    ``packages`` are pip requirements installed into the venv; ``imports`` are module names
    imported at build time (a failure fails the build and shows the ImportError); rlmesh itself
    comes from ``rlmesh_requirement`` (a requirement such as ``rlmesh==0.2.0``) or a local
    ``rlmesh_wheel`` file, or not at all when the base image has it. ``app_files`` maps relative
    paths to contents placed under ``/opt/rlmesh/app`` (the working directory, on
    ``PYTHONPATH``). ``system_packages`` are Debian packages installed with apt first (their
    own layer, before the venv). ``ca_cert_dir``'s ``*.crt`` files are trusted inside the build and the
    image; ``None`` skips them. ``labels`` are image labels applied by the driver.
    """
    if rlmesh_requirement is not None and rlmesh_wheel is not None:
        raise PackageSpecError("give rlmesh_requirement or rlmesh_wheel, not both")
    base = validate_image_name(base_image or default_base_image())
    specs = _unique(validate_package_spec(spec, allow_urls=allow_urls) for spec in packages)
    modules = _unique(validate_import_name(name) for name in imports)
    debs = sorted(_unique(validate_system_package(name) for name in system_packages))
    context: dict[str, bytes] = {}
    lines = [
        "# Generated by rlmesh_images.recipe; edits are lost on the next build.",
        f"FROM {base}",
        "USER root",
    ]

    certs = _ca_certificates(ca_cert_dir)
    if certs:
        context.update({f"ca-certificates/{name}": data for name, data in certs.items()})
        lines += [
            "COPY ca-certificates/ /usr/local/share/ca-certificates/",
            _run("update-ca-certificates"),
        ]
    if debs:
        # Sorted: the same set in any order is the same layer, hence the same image.
        context["apt_install.sh"] = _packaged_file("apt_install.sh")
        lines += [f"COPY apt_install.sh {_APT_INSTALL}", _run("/bin/sh", _APT_INSTALL, *debs)]
    lines += [
        f"ENV SSL_CERT_FILE={_CA_BUNDLE} REQUESTS_CA_BUNDLE={_CA_BUNDLE} PIP_CERT={_CA_BUNDLE} \\",
        "    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \\",
        f"    PYTHONUNBUFFERED=1 VIRTUAL_ENV={VENV_DIR} PATH={_PATH}",
        _run("/usr/bin/python3", "-m", "venv", VENV_DIR),
        _run("useradd", "--no-log-init", "--create-home", "--user-group",
             "--uid", str(SANDBOX_UID), "--shell", "/bin/sh", SANDBOX_USER),
        f"COPY import_check.py {_IMPORT_CHECK}",
    ]
    context["import_check.py"] = _packaged_file("import_check.py")

    if specs:
        lines.append(_pip_install(*specs))
    if rlmesh_requirement is not None:
        lines.append(_pip_install(validate_package_spec(rlmesh_requirement, allow_urls=allow_urls)))
    elif rlmesh_wheel is not None:
        wheel = _wheel_name(rlmesh_wheel)
        context[f"wheels/{wheel}"] = Path(rlmesh_wheel).read_bytes()
        lines += [
            "COPY wheels/ /opt/rlmesh/wheels/",
            _pip_install(f"/opt/rlmesh/wheels/{wheel}"),
        ]

    if modules:
        lines.append(_run(_VENV_PYTHON, _IMPORT_CHECK, *modules))

    if app_files:
        for path in sorted(app_files):
            context[f"app/{_validate_app_path(path)}"] = bytes(app_files[path])
        lines += [f"COPY app/ {APP_DIR}/", f"ENV PYTHONPATH={APP_DIR}", f"WORKDIR {APP_DIR}"]

    lines += [f"USER {SANDBOX_USER}", 'CMD ["python"]']
    return ImageRecipe(
        dockerfile="\n".join(lines) + "\n",
        context_files=context,
        repository=repository,
        labels=dict(labels or {}),
        packages=tuple(specs),
        imports=tuple(modules),
        app_files=dict(app_files or {}),
    )


def _run(*argv: str) -> str:
    # Exec form: the arguments reach the program as-is, no shell ever parses them.
    return "RUN " + json.dumps(list(argv))


def _pip_install(*requirements: str) -> str:
    return _run(_VENV_PYTHON, "-m", "pip", "install", "--", *requirements)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _ca_certificates(directory: Path | None) -> dict[str, bytes]:
    if directory is None or not directory.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.crt"))}


def _wheel_name(wheel: Path) -> str:
    name = Path(wheel).name
    if not _WHEEL_NAME.fullmatch(name):
        raise PackageSpecError(f"rlmesh_wheel {str(wheel)!r} is not a wheel file name (*.whl)")
    return name


def _validate_app_path(path: str) -> str:
    pure = PurePosixPath(path)
    if (
        not path
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
        or any(ord(char) < 32 or char == "\\" for char in path)
    ):
        raise PackageSpecError(
            f"app file path {path!r} must be relative, use '/' separators and stay inside the "
            "app directory (no '..', no absolute paths, no control characters)"
        )
    return path


def _packaged_file(name: str) -> bytes:
    return importlib.resources.files("rlmesh_images").joinpath(name).read_bytes()
