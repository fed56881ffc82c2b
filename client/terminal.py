"""What the CLI writes besides results: errors with the API's field messages, the progress bar.

Kept apart from the commands (client/cli.py) so each command stays a few lines.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from client.errors import ApiError, ConveyorError, Unreachable

out = Console()
err = Console(stderr=True)


def print_error(exc: ConveyorError) -> None:
    """`error: ...` on stderr, then one indented line per field the API named, and a hint."""
    # soft_wrap: a long line is the terminal's to wrap, never broken by a newline
    # (the field names and ids in it stay whole for copying).
    err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
    if isinstance(exc, ApiError):
        for line in exc.detail_lines():
            err.print(f"  {line}", markup=False, soft_wrap=True)
    elif isinstance(exc, Unreachable):
        err.print("  is it running? Start it with `make run`, or set CONVEYOR_URL (or --url)")


def stdout_at_least(width: int) -> Console:
    """Standard output as a console of at least `width` columns (a narrower terminal wraps it)."""
    return out if out.width >= width else Console(width=width)


class ProgressBar:
    """A job's bar, drawn from the first status that arrives (nothing before an answer).

    On a terminal it is rich's live bar; otherwise (a log, a pipe, CI) one
    plain line per change of state or progress, which reads well there.
    """

    def __init__(self, task_id: str) -> None:
        self.label = task_id[:8]
        self.progress: Progress | None = None
        self.bar: TaskID | None = None
        self.last_line: str | None = None

    def update(self, status: dict[str, Any]) -> None:
        if not err.is_terminal:
            line = f"{self.label} {status.get('state')} {status.get('progress') or 0}%"
            if line != self.last_line:
                err.print(line, markup=False, highlight=False)
                self.last_line = line
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            self.bar = self.progress.add_task(self.label, total=100)
            self.progress.start()
        assert self.bar is not None
        self.progress.update(
            self.bar,
            completed=status.get("progress") or 0,
            description=f"{self.label} {status.get('state')}",
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
