"""Printing for every command: a rich console for tables and lines, or JSON."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

__all__ = ["echo_json", "make_console"]


def make_console() -> Console:
    """A console that prints text as given (no highlighting) and never wraps it."""
    return Console(highlight=False, soft_wrap=True)


def echo_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (for ``--json``)."""
    click.echo(json.dumps(data, indent=2))
