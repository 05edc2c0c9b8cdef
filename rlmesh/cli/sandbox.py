"""``rlmesh sandbox``: list rlmesh's sandbox containers and reap those whose owner is gone."""

from __future__ import annotations

import click
from rich.table import Table

from rlmesh.cli.drivers import open_driver, runtime_option
from rlmesh.cli.output import echo_json, make_console

__all__ = ["sandbox"]


@click.group()
def sandbox() -> None:
    """rlmesh's sandbox containers."""


@sandbox.command(name="ls")
@runtime_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_sandboxes(runtime: str | None, host: str | None, as_json: bool) -> None:
    """List containers started by rlmesh, with their owner and whether it still runs."""
    from rlmesh.runtime import labels

    driver = open_driver(runtime, host)
    try:
        found = driver.list({labels.MANAGED: "true"})
    finally:
        driver.close()
    rows = [{
        "id": info.id[:12], "name": info.name, "running": info.running,
        "session": info.labels.get(labels.SESSION, "")[:12],
        "owner": f"{info.labels.get(labels.OWNER_PID, '?')}@{info.labels.get(labels.HOST, '?')}",
        "orphan": labels.owner_is_gone(info.labels), "version": info.labels.get(labels.VERSION, ""),
    } for info in found]
    if as_json:
        echo_json(rows)
        return
    table = Table(title=f"rlmesh containers on {driver.name}")
    for column in rows[0] if rows else ("id",):
        table.add_column(column)
    for row in rows:
        table.add_row(*(("yes" if v else "no") if isinstance(v, bool) else str(v) for v in row.values()))
    make_console().print(table if rows else f"No rlmesh containers on {driver.name}.")


@sandbox.command()
@runtime_option
def reap(runtime: str | None, host: str | None) -> None:
    """Remove rlmesh containers whose owning process is gone."""
    from rlmesh.runtime import reap_orphans

    driver = open_driver(runtime, host)
    try:
        reaped = reap_orphans(driver)
    finally:
        driver.close()
    for container_id in reaped:
        click.echo(f"removed {container_id[:12]}")
    click.echo(f"Reaped {len(reaped)} orphaned container(s) on {driver.name}.")
