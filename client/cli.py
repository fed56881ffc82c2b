"""The `conveyor` command: log in, submit jobs, watch them with a progress bar, cancel them.

Exit codes: 0 the job succeeded (or the command did its work), 1 the job
failed, 2 bad usage (an id prefix that names several jobs included), 3 the job
was cancelled (REVOKED), 4 it did not finish in time, 5 the API refused the
request or could not be reached, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from client import admin_failed, admin_fair_share, config
from client.core import STATES, ConveyorClient
from client.errors import ConveyorError, WaitTimeout
from client.terminal import ProgressBar, err, out, print_error, stdout_at_least

EXIT_FAILURE, EXIT_USAGE, EXIT_REVOKED, EXIT_TIMEOUT, EXIT_ERROR = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
STATE_EXIT = {"SUCCESS": 0, "FAILURE": EXIT_FAILURE, "REVOKED": EXIT_REVOKED}
# How much of an id `conveyor jobs` shows (more when that is not unique on the page).
SHORT_ID = 8
# Columns `conveyor jobs --wide` needs for whole ids and every other column.
WIDE_TABLE = 110


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
    """Run an API call; an API or connection error is printed (with its fields) and exits 5."""
    try:
        return call()
    except WaitTimeout:
        raise
    except ConveyorError as exc:
        print_error(exc)
        sys.exit(EXIT_ERROR)


def _task_id(ctx: click.Context, given: str) -> str:
    """`given` as a whole task id: itself, or the one of your jobs whose id starts with it."""
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    listing = _run(lambda: _client(ctx).jobs(id_prefix=given, limit=5))
    items = listing["items"]
    if not items:
        err.print(
            f"[red]error:[/] no job of yours has an id starting with {given!r}", soft_wrap=True
        )
        ctx.exit(EXIT_ERROR)
    if listing["total"] > 1:
        shown = ", ".join(item["task_id"] for item in items)
        more = "" if listing["total"] <= len(items) else ", …"
        err.print(
            f"[red]error:[/] {listing['total']} of your jobs have ids starting with {given!r} "
            f"({shown}{more}); give more of the id",
            soft_wrap=True,
        )
        ctx.exit(EXIT_USAGE)
    return items[0]["task_id"]


class ConveyorCommands(click.Group):
    """The command group; Ctrl-C anywhere ends it with 130, not click's 1 (which means FAILURE)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.Abort):
            err.print("interrupted")
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=ConveyorCommands)
@click.option("--url", help="API base URL (default: CONVEYOR_URL, else the saved login).")
@click.pass_context
def main(ctx: click.Context, url: str | None) -> None:
    """Conveyor from the command line: log in, submit jobs, follow them, cancel them.

    Job ids: watch and cancel take a whole id or any start of one that only
    one of your jobs has (as `conveyor jobs` shows them).

    \b
    Exit codes:
      0    the job succeeded (or the command did its work)
      1    the job failed (FAILURE)
      2    bad usage, or an id start that several of your jobs share
      3    the job was cancelled (REVOKED)
      4    the job did not finish within --timeout
      5    the API refused the request, or could not be reached
      130  interrupted (Ctrl-C)
    """
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
    err.print(
        f"logged in as {username}; token saved to {path} (valid {answer['expires_in']} s)",
        markup=False,
        soft_wrap=True,
    )
    if answer.get("task_id"):
        short = answer["task_id"][:SHORT_ID]
        err.print(
            f"your login queued job {short}: 1-10 random transactions (demo data); "
            f"follow it with `conveyor watch {short}`",
            markup=False,
            soft_wrap=True,
        )


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
    """Follow a job (its id, or the start of one) with a progress bar until it ends."""
    _needs_token(ctx)
    _follow(ctx, _task_id(ctx, task_id), timeout=timeout, as_json=as_json, stream=not poll)


def _follow(
    ctx: click.Context, task_id: str, *, timeout: float, as_json: bool, stream: bool
) -> None:
    api = _client(ctx)
    bar = ProgressBar(task_id)
    try:
        final = api.wait(task_id, timeout, on_update=bar.update, stream=stream)
        bar.update(final)
    except WaitTimeout as exc:
        bar.stop()
        err.print(f"[yellow]timeout:[/] {exc}")
        if as_json and exc.last is not None:
            click.echo(json.dumps(exc.last))
        ctx.exit(EXIT_TIMEOUT)
    except ConveyorError as exc:
        bar.stop()
        print_error(exc)
        ctx.exit(EXIT_ERROR)
    finally:
        bar.stop()
    _print_outcome(final, as_json)
    ctx.exit(STATE_EXIT.get(final["state"], EXIT_ERROR))


def _print_outcome(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status))
        return
    colour = {"SUCCESS": "green", "FAILURE": "red"}.get(status["state"], "yellow")
    out.print(f"[{colour}]{status['state']}[/] {status['kind']} {status['task_id']}")
    if status.get("error"):
        out.print(f"{status['error']['code']}: {status['error']['message']}", markup=False)
    if status.get("result") is not None:
        out.print_json(json.dumps(status["result"]), sort_keys=True)


@main.command()
@click.option("--state", type=click.Choice(sorted(STATES)))
@click.option("--kind")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1)
@click.option("--wide", is_flag=True, help="Whole task ids in the table.")
@click.option("--plain", is_flag=True, help="Tab-separated lines, whole ids, no table.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(
    ctx: click.Context,
    state: str | None,
    kind: str | None,
    limit: int,
    page: int,
    wide: bool,
    plain: bool,
    as_json: bool,
) -> None:
    """Your jobs, newest first (ids shortened to a unique start unless --wide or --plain)."""
    _needs_token(ctx)
    api = _client(ctx)
    listing = _run(lambda: api.jobs(state=state, kind=kind, page=page, limit=limit))
    items = listing["items"]
    if as_json:
        click.echo(json.dumps(listing))
        return
    if plain:
        for item in items:
            fields = (item["task_id"], item["kind"], item["state"], item["progress"])
            click.echo("\t".join(str(field) for field in (*fields, item["created_at"])))
        return
    width = 36 if wide else _unique_width([item["task_id"] for item in items])
    table = Table("id", "kind", "state", "progress", "created")
    for item in items:
        created = (item["created_at"] or "").replace("T", " ")[:19]
        table.add_row(
            item["task_id"][:width], item["kind"], item["state"], f"{item['progress']}%", created
        )
    # --wide: the table as wide as it needs, past a narrow terminal (which wraps
    # the lines), so no column is shortened: every id stays whole.
    (stdout_at_least(WIDE_TABLE) if wide else out).print(table)
    note = "" if wide else "; ids shortened: watch and cancel take them, --wide prints them whole"
    out.print(
        f"page {listing['page']}, {listing['total']} in all{note}", markup=False, soft_wrap=True
    )


def _unique_width(task_ids: list[str]) -> int:
    """The fewest leading characters (at least SHORT_ID) that tell these ids apart."""
    width = SHORT_ID
    while width < 36 and len({task_id[:width] for task_id in task_ids}) < len(task_ids):
        width += 1
    return width


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def wallet(ctx: click.Context, as_json: bool) -> None:
    """Your balance, in minor units (cents) of your wallet's currency."""
    _needs_token(ctx)
    answer = _run(lambda: _client(ctx).wallet())
    if as_json:
        click.echo(json.dumps(answer))
    else:
        out.print(f"balance {answer['balance']} ({answer['currency']} minor units)", markup=False)


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Cancel a job that has not finished (its id, or the start of one)."""
    _needs_token(ctx)
    whole = _task_id(ctx, task_id)
    status = _run(lambda: _client(ctx).cancel(whole))
    if as_json:
        click.echo(json.dumps(status))
    else:
        out.print(f"{status['task_id']} {status['state']}")


main.add_command(admin_failed.admin)  # `conveyor admin failed list|replay` (client/admin_failed.py)
# `conveyor admin fair-share show|set|reset` (client/admin_fair_share.py), under `admin`.
admin_failed.admin.add_command(admin_fair_share.fair_share)
