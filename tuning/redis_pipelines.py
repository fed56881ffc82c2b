"""One pipelined Redis round trip on a connection of its own (tuning/redis_connections.py).

The submit flush (shared/jobs/submission.py) sends one LPUSH per queue and
one EVALSHA per job in one pipeline. A `LeanPipeline` packs its commands
with hiredis, sends them in one write and reads one raw answer per command:
an error answer (NoScriptError included) takes its command's place, as with
redis-py's `execute(raise_on_error=False)`. A connection or timeout error
discards the connection and runs the whole pipeline again through the real
client, as redis-py's own pipeline does on such an error. See
tuning/redis_connections.py for what, why, the versions and the switch
(`redis_own_connections`).
"""

from __future__ import annotations

from typing import Any

import redis

from tuning.redis_connections import TRANSIENT, OwnConnections

try:  # redis-py's own packer calls it too, after a Python pass over every argument
    from hiredis import pack_command
except ImportError:  # pragma: no cover - hiredis is pinned in requirements.txt
    pack_command = None

# Connections one process keeps. The gevent web runs at most 64 requests in the
# app per worker (gunicorn.conf.py) and one flush at a time per worker; past this
# many at once a pipeline takes the client's pool instead.
MAX_CONNECTIONS = 8


class LeanPipelines:
    """Pipelines for `client`'s Redis on connections of their own."""

    def __init__(self, client: redis.Redis, max_connections: int = MAX_CONNECTIONS) -> None:
        self.client = client
        self._connections = OwnConnections(client, max_connections)

    def pipeline(self) -> LeanPipeline:
        return LeanPipeline(self)

    def connections(self) -> int:
        """Connections of its own open right now (idle or in use)."""
        return self._connections.count()

    def close(self) -> None:
        """Close every idle connection (those in use are closed when they come back)."""
        self._connections.close()

    def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's raw answer, or the ResponseError it got, in order."""
        if not commands:
            return []
        connection = self._connections.checkout()
        if connection is None:
            return self._through_client(commands)
        try:
            connection.send_packed_command(_pack(connection, commands))
            answers: list[Any] = []
            for _ in commands:
                try:
                    answers.append(connection.read_response())
                except redis.ResponseError as exc:
                    answers.append(exc)
        except BaseException as exc:
            self._connections.discard(connection)
            if isinstance(exc, TRANSIENT):
                return self._through_client(commands)
            raise
        self._connections.give_back(connection)
        return answers

    def _through_client(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute(raise_on_error=False)


class LeanPipeline:
    """Commands queued for one round trip; `execute` sends them (redis-py's method names)."""

    __slots__ = ("_commands", "_owner")

    def __init__(self, owner: LeanPipelines) -> None:
        self._owner = owner
        self._commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> LeanPipeline:
        self._commands.append(args)
        return self

    def lpush(self, name: str, *values: Any) -> LeanPipeline:
        return self.execute_command("LPUSH", name, *values)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> LeanPipeline:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def __len__(self) -> int:
        return len(self._commands)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Every answer in order; with `raise_on_error`, the first error answer is raised."""
        commands, self._commands = self._commands, []
        answers = self._owner.run(commands)
        if raise_on_error:
            for answer in answers:
                if isinstance(answer, redis.ResponseError):
                    raise answer
        return answers


def _pack(connection: Any, commands: list[tuple[Any, ...]]) -> Any:
    """The commands in Redis's protocol, as chunks to send: hiredis's C packer when installed."""
    if pack_command is None:
        return connection.pack_commands(commands)
    try:
        return [b"".join([pack_command(command) for command in commands])]
    except TypeError as exc:  # an argument type Redis cannot take, as redis-py reports it
        raise redis.DataError(str(exc)) from exc
