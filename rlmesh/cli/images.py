"""``rlmesh images``: bootstrap the base image; build, list and prune rlmesh's sandbox images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table

from rlmesh.cli.drivers import open_driver, runtime_option
from rlmesh.cli.errors import CommandError, first_line
from rlmesh.cli.output import make_console
from rlmesh.errors import RLMeshError

__all__ = ["images"]


@click.group()
def images() -> None:
    """Base image bootstrap and rlmesh's sandbox images."""


class _LineForwarder(logging.Handler):
    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record.getMessage())


@images.command()
@runtime_option
@click.option("--tag", metavar="IMAGE", help="Image tag (default: $RLMESH_BASE_IMAGE or rlmesh-base:bookworm).")
@click.option("--mirror", metavar="URL", help="Debian mirror (default: the host's apt source).")
@click.option("--tarball", type=click.Path(dir_okay=False, path_type=Path),
              help="Root filesystem tarball: reused when it exists (carry one to air-gapped hosts).")
@click.option("--force", is_flag=True, help="Rebuild the root filesystem and import again.")
def bootstrap(runtime: str | None, host: str | None, tag: str | None, mirror: str | None,
              tarball: Path | None, force: bool) -> None:
    """Build the Debian + Python base image locally (no registry) and import it."""
    from rlmesh_images.bootstrap import bootstrap as run_bootstrap
    from rlmesh_images.bootstrap import default_base_image

    from rlmesh.progress import progress_lines

    driver = open_driver(runtime, host)
    target = tag or default_base_image()
    bootstrap_log = logging.getLogger("rlmesh_images.bootstrap")
    try:
        with progress_lines(f"Bootstrapping {target} on {driver.name}") as line:
            forwarder = _LineForwarder(line)
            bootstrap_log.addHandler(forwarder)
            try:
                result = run_bootstrap(driver, target, tarball=tarball, mirror=mirror, force=force)
            finally:
                bootstrap_log.removeHandler(forwarder)
    finally:
        driver.close()
    make_console().print(f"{driver.name} has [bold]{result}[/bold]")


@images.command()
@click.argument("source")
@click.option("--tag", "name", required=True, metavar="NAME",
              help="Name of the image, e.g. my-envs:halfcheetah (run it as image://NAME).")
@click.option("--package", "-p", "packages", multiple=True, metavar="SPEC",
              help="pip requirement to install (repeatable).")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Module imported at build time to check the image (repeatable).")
@click.option("--system-package", "system_packages", multiple=True, metavar="NAME",
              help="Debian package to install (repeatable).")
@click.option("--base-image", metavar="IMAGE", help="Image to build on.")
@click.option("--rlmesh-package", metavar="SPEC", help="rlmesh inside: pip spec, wheel path or 'local'.")
@click.option("--build-memory", metavar="SIZE", help="Memory limit of the build, e.g. 4g.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a source's repository code to run.")
@click.option("--allow-unpinned-hf", is_flag=True, help="Allow an hf:// source without a commit sha.")
@runtime_option
def build(source: str, name: str, packages: tuple[str, ...], imports: tuple[str, ...],
          system_packages: tuple[str, ...], base_image: str | None, rlmesh_package: str | None,
          build_memory: str | None, trust_remote_code: bool, allow_unpinned_hf: bool,
          runtime: str | None, host: str | None) -> None:
    """Build the sandbox image of SOURCE ahead of time and name it (run it with image://NAME).

    The image records its source and settings in labels; a cluster can preload it, a registry
    can carry it, and sessions started from it build nothing.
    """
    from rlmesh.sandbox.session import SandboxSessionBase

    options = {"packages": list(packages) or None, "imports": list(imports) or None,
               "system_packages": list(system_packages) or None, "base_image": base_image,
               "rlmesh_package": rlmesh_package, "build_memory": build_memory,
               "trust_remote_code": trust_remote_code, "allow_unpinned_hf": allow_unpinned_hf,
               "runtime": open_driver(runtime, host) if host else runtime}
    built = SandboxSessionBase.build_image(source, name, **options)
    make_console().print(f"built [bold]{built}[/bold]; run it with SandboxEnv('image://{built}') "
                         f"or `rlmesh serve image://{built}`")


@images.command(name="list")
@runtime_option
def list_images(runtime: str | None, host: str | None) -> None:
    """List sandbox images built by rlmesh (and whether the base image is present)."""
    from rlmesh_images.bootstrap import default_base_image

    from rlmesh.runtime.labels import MANAGED

    driver = open_driver(runtime, host)
    try:
        tags = driver.list_images({MANAGED: "true"})
        base = default_base_image()
        has_base = driver.image_exists(base)
    finally:
        driver.close()
    table = Table(title=f"rlmesh images on {driver.name}")
    table.add_column("image")
    table.add_column("kind")
    table.add_row(base, "base" if has_base else "[red]base (missing: rlmesh images bootstrap)[/red]")
    for tag in tags:
        table.add_row(tag, "sandbox")
    make_console().print(table)


@images.command()
@runtime_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def prune(runtime: str | None, host: str | None, yes: bool) -> None:
    """Remove every sandbox image rlmesh built (the base image is kept)."""
    from rlmesh.runtime.labels import MANAGED

    driver = open_driver(runtime, host)
    try:
        tags = driver.list_images({MANAGED: "true"})
        if not tags:
            click.echo(f"No rlmesh sandbox images on {driver.name}.")
            return
        if not yes:
            click.confirm(f"Remove {len(tags)} sandbox image(s) from {driver.name}?", abort=True)
        failed = []
        for tag in tags:
            try:
                driver.remove_image(tag)
                click.echo(f"removed {tag}")
            except RLMeshError as exc:
                failed.append(tag)
                click.echo(f"could not remove {tag}: {first_line(exc)}", err=True)
    finally:
        driver.close()
    if failed:
        raise CommandError(f"{len(failed)} image(s) could not be removed",
                           "stop the containers using them (rlmesh sandbox ls) and retry")
