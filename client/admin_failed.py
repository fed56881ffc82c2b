"""`conveyor admin failed list|replay`: failed jobs by cause, and running them again (admins).

Registered on the `conveyor` command by client/cli.py. A replay runs the same
jobs again (same task ids); `--dry-run` shows what it would replay.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from client.core import ConveyorClient
from client.errors import ConveyorError
from client.terminal import print_error

# The `conveyor` command's exit code for a refused or unreachable API (client/cli.py).
EXIT_ERROR = 5

out = Console()
err = Console(stderr=True)


def _api(ctx: click.Context) -> ConveyorClient:
    profile = ctx.obj["profile"]
    if not profile.token:
        err.print("[red]not logged in:[/] run `conveyor login` or set CONVEYOR_TOKEN")
        ctx.exit(EXIT_ERROR)
    api = ConveyorClient(profile.url, profile.token, events_url=profile.events_url)
    ctx.call_on_close(api.close)
    return api


def _run(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ConveyorError as exc:
        print_error(exc)  # with the API's field messages and the unreachable hint
        sys.exit(EXIT_ERROR)


def _filters(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": options.get("kind"),
        "error_code": options.get("error_code"),
        "user_id": options.get("user_id"),
        "since": options.get("since"),
        "until": options.get("until"),
    }


_FILTER_OPTIONS = (
    click.option("--kind", help="Job kind, e.g. ai.text."),
    click.option("--error-code", help="Error code, e.g. ai_unavailable, worker_lost."),
    click.option("--user-id", type=int, help="Owner's user id."),
    click.option("--since", help="Failed at or after (ISO 8601 with a zone, e.g. ...Z)."),
    click.option("--until", help="Failed before (ISO 8601 with a zone)."),
)


def _with_filters(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_FILTER_OPTIONS):
        command = option(command)
    return command


@click.group()
def admin() -> None:
    """Administration (an admin's login)."""


@admin.group()
def failed() -> None:
    """Failed jobs: list them by cause, replay them."""


@failed.command("list")
@_with_filters
@click.option("--page", type=int, default=1, show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@click.pass_context
def list_failed(ctx: click.Context, page: int, limit: int, as_json: bool, **options: Any) -> None:
    """Failed jobs, newest failure first."""
    api = _api(ctx)
    listing = _run(lambda: api.failed_jobs(page=page, limit=limit, **_filters(options)))
    if as_json:
        click.echo(json.dumps(listing))
        return
    table = Table("task id", "kind", "user", "error", "failed at", "replays")
    for item in listing["items"]:
        table.add_row(
            item["task_id"], item["kind"], str(item["user_id"]), item["error"]["code"] or "",
            item["failed_at"] or "", str(item["replays"]),
        )  # fmt: skip
    out.print(table)
    out.print(f"page {listing['page']}, {listing['total']} failed in all")


@failed.command("replay")
@click.argument("task_ids", nargs=-1)
@_with_filters
@click.option("--all-matching", is_flag=True, help="Replay every failed job the filters match.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's answer.")
@click.pass_context
def replay_failed(
    ctx: click.Context,
    task_ids: tuple[str, ...],
    all_matching: bool,
    dry_run: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Run failed jobs again: the TASK_IDS given, or --all-matching the filters."""
    filters = _filters(options)
    if bool(task_ids) == all_matching or (task_ids and any(filters.values())):
        raise click.UsageError("give TASK_IDS, or --all-matching with filters (not both)")
    api = _api(ctx)
    answer = _run(
        lambda: api.replay_failed(
            task_ids=list(task_ids) if task_ids else None,
            filters=None if task_ids else filters,
            dry_run=dry_run,
        )
    )
    if as_json:
        click.echo(json.dumps(answer))
        return
    if dry_run:
        for item in answer["items"]:
            out.print(f"{item['task_id']} {item['kind']} {item['error']['code']}")
        out.print(f"would replay {answer['would_replay']} job(s); nothing changed")
    else:
        for item in answer["items"]:
            out.print(f"{item['task_id']} {item['state']}")
        out.print(f"replayed {answer['replayed']} job(s) (replay {answer['replay_id']})")
    for skipped in answer["skipped"]:
        err.print(f"[yellow]skipped[/] {skipped['task_id']}: {skipped['reason']}")
