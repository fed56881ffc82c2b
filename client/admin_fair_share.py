"""`conveyor admin fair-share show|set|reset`: a user's weight and running cap per fair queue.

Registered under `conveyor admin` by client/cli.py, beside `admin failed`.
"""

from __future__ import annotations

import json

import click
from rich.table import Table

from client.admin_failed import _api, _run, admin, out

QUEUES = click.Choice(["ai", "ledger"])


@admin.group("fair-share")
def fair_share() -> None:
    """Fair share: a user's weight and running cap on the ai and ledger queues."""


def _print(answer: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(answer))
        return
    table = Table("queue", "weight", "max running")
    for queue, share in answer["shares"].items():
        cap = share["max_running"]
        table.add_row(queue, str(share["weight"]), "default" if cap is None else str(cap))
    out.print(f"user {answer['user_id']}")
    out.print(table)


@fair_share.command("show")
@click.argument("user_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@click.pass_context
def show(ctx: click.Context, user_id: int, as_json: bool) -> None:
    """A user's shares."""
    api = _api(ctx)
    _print(_run(lambda: api.fair_share(user_id)), as_json)


@fair_share.command("set")
@click.argument("user_id", type=int)
@click.option("--queue", type=QUEUES, required=True)
@click.option(
    "--weight", type=int, default=1, show_default=True, help="Served this many times as often."
)
@click.option("--max-running", type=int, default=None, help="Jobs running at once (0: no cap).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@click.pass_context
def set_share(
    ctx: click.Context,
    user_id: int,
    queue: str,
    weight: int,
    max_running: int | None,
    as_json: bool,
) -> None:
    """Set a user's weight and running cap on one queue."""
    api = _api(ctx)
    answer = _run(
        lambda: api.set_fair_share(user_id, queue, weight=weight, max_running=max_running)
    )
    _print(answer, as_json)


@fair_share.command("reset")
@click.argument("user_id", type=int)
@click.option("--queue", type=QUEUES, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@click.pass_context
def reset(ctx: click.Context, user_id: int, queue: str, as_json: bool) -> None:
    """Give a user the defaults on one queue again."""
    api = _api(ctx)
    _print(_run(lambda: api.reset_fair_share(user_id, queue)), as_json)
