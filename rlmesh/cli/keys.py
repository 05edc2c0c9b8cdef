"""``rlmesh keys``: make the CurveZMQ certificates that keyed endpoints and their clients use."""

from __future__ import annotations

from pathlib import Path

import click

from rlmesh.cli.output import make_console

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Certificates for keyed endpoints (CurveZMQ, pyzmq's file format)."""


@keys.command(name="new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where to write NAME.key and NAME.key_secret.")
def new(name: str, directory: str) -> None:
    """Write a key pair: NAME.key (public, to share) and NAME.key_secret (mode 0600).

    \b
    A server takes its secret file (--server-key) and a folder of client public files
    (--authorized-keys); a client takes the server's public file and its own secret one.
    """
    from rlmesh.protocol.keys import new_keypair

    if not name or Path(name).name != name:
        raise click.BadParameter("give a plain file name, without a folder (use --dir)", param_hint="NAME")
    for existing in (Path(directory, f"{name}.key"), Path(directory, f"{name}.key_secret")):
        if existing.exists():
            raise click.ClickException(f"{existing} exists already; choose another NAME or remove it")
    public, secret = new_keypair(name, directory)
    console = make_console()
    console.print(f"public key: {public}  (share it: clients pass it as --server-key, servers list it "
                  "in --authorized-keys)")
    console.print(f"secret key: {secret}  (mode 0600; keep it where only its owner reads it)")
