"""The root ``rlmesh`` group, its subcommands, and :func:`main`, the console script's entry point.

Every unexpected exception of a subcommand becomes one ``Error:`` line plus a ``Hint:`` line
(exit 1; ``--verbose`` adds the traceback); usage errors exit 2 and interruptions 130.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from rlmesh._version import __version__
from rlmesh.cli.doctor import doctor
from rlmesh.cli.errors import EXIT_INTERRUPTED, CommandError, first_line, hint_for
from rlmesh.cli.evaluate import evaluate
from rlmesh.cli.images import images
from rlmesh.cli.keys import keys
from rlmesh.cli.runtimes import runtimes
from rlmesh.cli.sandbox import sandbox
from rlmesh.cli.serve import serve
from rlmesh.errors import RLMeshError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns every unexpected exception into a :class:`CommandError` (and a traceback with -v)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if _verbose(ctx):
                traceback.print_exc()
                if isinstance(exc, RLMeshError) and "\n" in str(exc):
                    click.echo(str(exc), err=True)
            raise CommandError(first_line(exc), hint_for(exc)) from exc


def _verbose(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("verbose"))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="rlmesh")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
def cli(verbose: bool) -> None:
    """Connect RL models to Gymnasium environments across processes, containers and machines."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # engine clients are chatty at INFO
        for noisy in ("urllib3", "docker", "podman", "python_on_whales", "httpx", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


for _command in (serve, evaluate, runtimes, doctor, images, sandbox, keys):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlmesh`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # "rlmesh eval ADDR --verbose" works too: the flag belongs to the group, so move it there.
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in ("-v", "--verbose")]
    args = flags + [a for a in args[:end] if a not in flags] + args[end:]
    try:
        cli.main(args=args, prog_name="rlmesh", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:  # a declined confirmation (or Ctrl-C at a prompt): nothing was done
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0
