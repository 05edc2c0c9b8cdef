"""``rlmesh runtimes``: the installed runtime drivers and whether each works here."""

from __future__ import annotations

import click
from rich.table import Table

from rlmesh.cli.drivers import driver_statuses
from rlmesh.cli.output import echo_json, make_console

__all__ = ["runtimes"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runtimes(as_json: bool) -> None:
    """List installed runtime drivers and whether each works here."""
    statuses = driver_statuses()
    try:
        if as_json:
            echo_json([{k: v for k, v in vars(s).items() if k != "driver"} for s in statuses])
            return
        table = Table(title="Runtime drivers (entry-point group rlmesh.runtimes)")
        for column in ("driver", "available", "engine", "rootless", "provided by", "why not"):
            table.add_column(column)
        for s in statuses:
            table.add_row(s.name, "[green]yes[/green]" if s.ok else "[red]no[/red]", s.version,
                          ("yes" if s.rootless else "no") if s.ok else "", s.provider,
                          s.reason.splitlines()[0] if s.reason else "")
        console = make_console()
        console.print(table)
        if not statuses:
            console.print('No drivers installed: pip install "rlmesh[docker]" (or podman, cli).')
    finally:
        for s in statuses:
            if s.driver is not None:
                s.driver.close()
