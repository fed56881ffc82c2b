"""The `conveyor` command: log in, submit jobs, watch them with a progress bar, cancel them.

Exit codes: 0 the job succeeded (or the command did its work), 1 the job
failed, 2 bad usage, 3 the job was cancelled (REVOKED), 4 it did not finish in
time, 5 the API refused the request or could not be reached.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from client import admin_failed, config
from client.core import STATES, ConveyorClient
from client.errors import ConveyorError, WaitTimeout

EXIT_FAILURE, EXIT_REVOKED, EXIT_TIMEOUT, EXIT_ERROR = 1, 3, 4, 5
STATE_EXIT = {"SUCCESS": 0, "FAILURE": EXIT_FAILURE, "REVOKED": EXIT_REVOKED}

out = Console()
err = Console(stderr=True)


def _client(ctx: click.Context) -> ConveyorClient:
    profile: config.Profile = ctx.obj["profile"]
    if ctx.obj.get("client") is None:
        ctx.obj["client"] = ConveyorClient(
            profile.url, profile.token, events_url=profile.events_url
        )
        ctx.call_on_close(ctx.obj["client"].close)
    return ctx.obj["client"]


def _needs_token(ctx: click.Context) -> None:
    if not ctx.obj["profile"].token:
        err.print("[red]not logged in:[/] run `conveyor login` or set CONVEYOR_TOKEN")
        ctx.exit(EXIT_ERROR)


def _run(call: Callable[[], Any]) -> Any:
    """Run an API call; an API or connection error is printed and exits 5."""
    try:
        return call()
    except WaitTimeout:
        raise
    except ConveyorError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_ERROR)


@click.group()
@click.option("--url", help="API base URL (default: CONVEYOR_URL, else the saved login).")
@click.pass_context
def main(ctx: click.Context, url: str | None) -> None:
    """Conveyor from the command line. Exit codes: 0 SUCCESS, 1 FAILURE, 3 REVOKED, 4 timeout."""
    profile = config.load()
    if url:
        profile = config.Profile(url, profile.token, profile.events_url)
    ctx.obj = {"profile": profile}


@main.command()
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True)
@click.option("--register", is_flag=True, help="Create the account first.")
@click.pass_context
def login(ctx: click.Context, username: str, password: str, register: bool) -> None:
    """Log in and save the token (mode 0600) for later commands."""
    api = _client(ctx)
    if register:
        _run(lambda: api.register(username, password))
    answer = _run(lambda: api.login(username, password))
    profile = ctx.obj["profile"]
    path = config.save(config.Profile(profile.url, answer["access_token"], profile.events_url))
    err.print(f"logged in as {username}; token saved to {path} (valid {answer['expires_in']} s)")


def _follow_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--wait", is_flag=True, help="Wait for the job to finish."),
            click.option("--timeout", type=float, default=600.0, show_default=True),
            click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
            click.option("--idempotency-key", help="Resubmitting with it returns the same job."),
            click.option("--poll", is_flag=True, help="Poll instead of using the event stream."),
        ]
    ):
        command = option(command)
    return command


@main.group()
def submit() -> None:
    """Submit a job."""


@submit.command("transaction")
@click.option("--type", "kind", type=click.Choice(["credit", "debit"]), required=True)
@click.option("--amount", type=click.IntRange(1, 10**12), required=True, help="Minor units.")
@click.option("--description", default="")
@_follow_options
@click.pass_context
def submit_transaction(
    ctx: click.Context, kind: str, amount: int, description: str, **follow: Any
) -> None:
    """A credit or debit on your wallet."""
    body = {"type": kind, "amount": amount, "description": description}
    _submit(ctx, "transaction", body, **follow)


@submit.command("random")
@click.option("--count", type=click.IntRange(1, 10), help="1-10 (random when absent).")
@_follow_options
@click.pass_context
def submit_random(ctx: click.Context, count: int | None, **follow: Any) -> None:
    """A batch of 1-10 random transactions."""
    _submit(ctx, "random", {} if count is None else {"count": count}, **follow)


@submit.command("ai")
@click.option("--kind", type=click.Choice(["text", "presentation", "image"]), required=True)
@click.option("--prompt", required=True)
@click.option("--option", "options", multiple=True, help="key=value, e.g. num_cards=5.")
@_follow_options
@click.pass_context
def submit_ai(
    ctx: click.Context, kind: str, prompt: str, options: tuple[str, ...], **follow: Any
) -> None:
    """An AI generation job (text, presentation or image)."""
    body = {"kind": kind, "prompt": prompt, "options": _parse_options(options)}
    _submit(ctx, "ai", body, **follow)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--option")
        parsed[key] = int(value) if value.isdigit() else value
    return parsed


def _submit(
    ctx: click.Context,
    job: str,
    body: dict[str, Any],
    *,
    wait: bool,
    timeout: float,
    as_json: bool,
    idempotency_key: str | None,
    poll: bool,
) -> None:
    _needs_token(ctx)
    api = _client(ctx)
    accepted = _run(lambda: api.submit(job, body, idempotency_key=idempotency_key))  # type: ignore[arg-type]
    if not wait:
        if as_json:
            click.echo(json.dumps(accepted))
        else:
            out.print(f"{accepted['task_id']}  {accepted['kind']}  {accepted['state']}")
        return
    _follow(ctx, accepted["task_id"], timeout=timeout, as_json=as_json, stream=not poll)


@main.command()
@click.argument("task_id")
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--poll", is_flag=True, help="Poll instead of using the event stream.")
@click.pass_context
def watch(ctx: click.Context, task_id: str, timeout: float, as_json: bool, poll: bool) -> None:
    """Follow a job with a progress bar until it ends."""
    _needs_token(ctx)
    _follow(ctx, task_id, timeout=timeout, as_json=as_json, stream=not poll)


def _follow(
    ctx: click.Context, task_id: str, *, timeout: float, as_json: bool, stream: bool
) -> None:
    api = _client(ctx)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    bar = progress.add_task(f"{task_id[:8]} PENDING", total=100)

    def update(status: dict[str, Any]) -> None:
        progress.update(
            bar,
            completed=status.get("progress") or 0,
            description=f"{task_id[:8]} {status.get('state')}",
        )

    try:
        with progress:
            final = _run(lambda: api.wait(task_id, timeout, on_update=update, stream=stream))
            update(final)
    except WaitTimeout as exc:
        err.print(f"[yellow]timeout:[/] {exc}")
        if as_json and exc.last is not None:
            click.echo(json.dumps(exc.last))
        ctx.exit(EXIT_TIMEOUT)
    _print_outcome(final, as_json)
    ctx.exit(STATE_EXIT.get(final["state"], EXIT_ERROR))


def _print_outcome(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status))
        return
    colour = {"SUCCESS": "green", "FAILURE": "red"}.get(status["state"], "yellow")
    out.print(f"[{colour}]{status['state']}[/] {status['kind']} {status['task_id']}")
    if status.get("error"):
        out.print(f"{status['error']['code']}: {status['error']['message']}")
    if status.get("result") is not None:
        out.print_json(json.dumps(status["result"]))


@main.command()
@click.option("--state", type=click.Choice(sorted(STATES)))
@click.option("--kind")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(
    ctx: click.Context, state: str | None, kind: str | None, limit: int, page: int, as_json: bool
) -> None:
    """Your jobs, newest first."""
    _needs_token(ctx)
    api = _client(ctx)
    listing = _run(lambda: api.jobs(state=state, kind=kind, page=page, limit=limit))
    if as_json:
        click.echo(json.dumps(listing))
        return
    table = Table("task id", "kind", "state", "progress", "created")
    for item in listing["items"]:
        table.add_row(
            item["task_id"], item["kind"], item["state"], f"{item['progress']}%", item["created_at"]
        )
    out.print(table)
    out.print(f"page {listing['page']}, {listing['total']} in all")


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Cancel a job that has not finished."""
    _needs_token(ctx)
    status = _run(lambda: _client(ctx).cancel(task_id))
    if as_json:
        click.echo(json.dumps(status))
    else:
        out.print(f"{status['task_id']} {status['state']}")


main.add_command(admin_failed.admin)  # `conveyor admin failed list|replay` (client/admin_failed.py)
