"""How a failed command reads: one ``Error:`` line, one ``Hint:`` line, and the exit codes."""

from __future__ import annotations

from typing import Any

import click

from rlmesh.errors import (
    AuthenticationError,
    ContainerError,
    ImageBuildError,
    PackageSpecError,
    RuntimeUnavailableError,
    SourceError,
    VersionMismatchError,
)

__all__ = ["EXIT_INTERRUPTED", "CommandError", "first_line", "hint_for"]

#: Exit code of an interrupted command (the shell convention for SIGINT).
EXIT_INTERRUPTED = 130


class CommandError(click.ClickException):
    """A failure shown as one line plus a hint (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: Any = None) -> None:
        click.secho(f"Error: {self.format_message()}", err=True, fg="red")
        if self.hint:
            click.echo(f"Hint: {self.hint}", err=True)


def hint_for(exc: BaseException) -> str:
    """What to try next after ``exc``, by its kind."""
    if isinstance(exc, RuntimeUnavailableError):
        return "run `rlmesh runtimes` to see which engines work here, or `rlmesh doctor`"
    if isinstance(exc, VersionMismatchError):
        return "install the same rlmesh version on both sides"
    if isinstance(exc, PackageSpecError):
        return "pass plain pip requirements such as --package gymnasium==1.3.0 (no pip options or shell syntax)"
    if isinstance(exc, SourceError):
        return ("on the command line use --trust-remote-code / --allow-unpinned-hf; "
                "`rlmesh serve --help` lists the accepted source forms")
    if isinstance(exc, ImageBuildError):
        return "rerun with --verbose to see the build log"
    if isinstance(exc, ContainerError):
        return "rerun with --verbose to see the container's last log lines"
    if isinstance(exc, AuthenticationError):
        return ("on the command line: --server-key SERVER.key and --client-key YOU.key_secret "
                "(or $RLMESH_SERVER_KEY / $RLMESH_CLIENT_KEY); `rlmesh keys new` makes a pair")
    if isinstance(exc, ValueError) and "without keys" in str(exc):
        return "on the command line: --server-key SERVER.key_secret --authorized-keys FOLDER, or --insecure"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "is a server running there? Start one with `rlmesh serve ENV_ID --address ADDRESS`"
    if isinstance(exc, ImportError):
        return "install the missing package (pip install \"rlmesh[all]\" brings every extra)"
    return "rerun with --verbose for the traceback"


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when empty), noting any more lines."""
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    more = " (more with --verbose)" if len(lines) > 1 else ""
    return lines[0] + more
