"""The Lua scripts behind the live status document and its event log (shared/jobs/status.py).

Each runs as one call: a document and its events are written together or not
at all. Kept apart from the store so the store reads as Python, with how they
run on a pipeline (`StatusPipeline`).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.commands.core import Script

# A PENDING document's queue estimate: the queue hands out tickets at submit
# (INCR) and remembers the highest ticket a worker has claimed; a job's
# position is the tickets between. Claim times of the last CLAIM_WINDOW jobs
# give the drain rate. Both are estimates: a failed publish leaves a gap
# ticket, and prefetching workers claim a little out of order.
CLAIM_WINDOW = 32

# Shared by the scripts below: append one event under one id to the firehose,
# the job's stream and the owner's stream (capped, expiring). The firehose
# assigns the id; the same id in the smaller streams lets a client resume any
# of them with one Last-Event-ID. An explicit id can only fail if the
# firehose was deleted by hand; the event then gets the stream's own id.
APPEND_EVENT = """
local function append_event(job_stream, user_stream, firehose, kind, job, owner, data, at, ttl,
                            job_max, user_max, firehose_max)
  local id = redis.call('XADD', firehose, 'MAXLEN', '~', firehose_max, '*',
                        'type', kind, 'job', job, 'owner', owner, 'data', data, 'time', at)
  if job_stream ~= '' then
    local ok = redis.pcall('XADD', job_stream, 'MAXLEN', '~', job_max, id,
                           'type', kind, 'job', job, 'owner', owner, 'data', data, 'time', at)
    if type(ok) == 'table' and ok.err then
      redis.call('XADD', job_stream, 'MAXLEN', '~', job_max, '*',
                 'type', kind, 'job', job, 'owner', owner, 'data', data, 'time', at)
    end
    redis.call('EXPIRE', job_stream, ttl)
  end
  local ok = redis.pcall('XADD', user_stream, 'MAXLEN', '~', user_max, id,
                         'type', kind, 'job', job, 'owner', owner, 'data', data, 'time', at)
  if type(ok) == 'table' and ok.err then
    redis.call('XADD', user_stream, 'MAXLEN', '~', user_max, '*',
               'type', kind, 'job', job, 'owner', owner, 'data', data, 'time', at)
  end
  redis.call('EXPIRE', user_stream, ttl)
  return id
end
"""

# KEYS = status hash, job stream, user stream, firehose, queue's claimed
# ticket, queue's claim times. ARGV = document, ttl, state, mode ("set" |
# "nx"), owner, event type ("" for none), job id, time, stream caps.
# A terminal document is final: nothing is written or appended after it, so a
# late progress can neither resurrect a job nor follow its terminal event.
# "nx" only fills a missing key (the API's fallback snapshot must never
# overwrite a worker's newer write) and is not an event.
WRITE_STATUS = (
    APPEND_EVENT
    + f"""
local current = redis.call('HGET', KEYS[1], 'state')
if ARGV[4] == 'nx' and current then return 0 end
if current == 'SUCCESS' or current == 'FAILURE' or current == 'REVOKED' then return 0 end
if ARGV[3] ~= 'PENDING' and ARGV[3] ~= 'REVOKED'
   and redis.call('HSETNX', KEYS[1], 'claimed', '1') == 1 then
  -- A worker's first write (STARTED, or straight to the outcome for a job run
  -- in one statement): the job left its queue. Advance the queue's claimed
  -- ticket and note the time. A cancel does not: the message is still queued.
  local ticket = tonumber(redis.call('HGET', KEYS[1], 'ticket') or '')
  if ticket then
    if ticket > tonumber(redis.call('GET', KEYS[5]) or '0') then
      redis.call('SET', KEYS[5], ticket)
    end
    local now = redis.call('TIME')
    redis.call('LPUSH', KEYS[6], now[1] * 1000 + math.floor(now[2] / 1000))
    redis.call('LTRIM', KEYS[6], 0, {CLAIM_WINDOW - 1})
  end
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'state', ARGV[3], 'owner', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[6] ~= '' then
  return append_event(KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[5], ARGV[1], ARGV[8],
                      ARGV[2], ARGV[9], ARGV[10], ARGV[11])
end
return 1
"""
)

# A job just accepted: its PENDING document with a queue ticket, and its
# first event. KEYS = status hash, job stream, user stream, firehose, the
# queue's ticket counter. ARGV as WRITE_STATUS plus the queue name. A worker
# that was faster than this call already wrote a newer document: then
# nothing is written (and no ticket taken).
RECORD_ENQUEUED = (
    APPEND_EVENT
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ticket = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'state', 'PENDING', 'owner', ARGV[2],
           'queue', ARGV[3], 'ticket', ticket)
redis.call('EXPIRE', KEYS[1], ARGV[4])
append_event(KEYS[2], KEYS[3], KEYS[4], 'state', ARGV[5], ARGV[2], ARGV[1], ARGV[6],
             ARGV[4], ARGV[7], ARGV[8], ARGV[9])
return ticket
"""
)

# A notification, as an event of its owner's stream only: the job's stream
# ends with the job's terminal state event.
APPEND_NOTIFICATION = (
    APPEND_EVENT
    + """
return append_event('', KEYS[1], KEYS[2], 'notification', ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                    ARGV[5], ARGV[6], ARGV[7], ARGV[8])
"""
)


class StatusPipeline:
    """A pipeline on which the store's Lua scripts run as bare EVALSHA.

    A redis-py Script called on a pipeline makes every `execute()` ask SCRIPT
    EXISTS first: one more round trip per pipeline, on every job's status
    writes. Here a script goes in as EVALSHA; if Redis has lost the script
    (a restart), only that call fails with NOSCRIPT, and `execute` runs it
    again through the Script, which loads it: the other commands ran once.
    Every other command is the wrapped pipeline's own.
    """

    def __init__(self, pipe: redis.client.Pipeline) -> None:
        self._pipe = pipe
        self._scripts: dict[int, tuple[Script, list[Any], list[Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __len__(self) -> int:
        return len(self._pipe)

    def run_script(self, script: Script, keys: list[Any], args: list[Any]) -> None:
        """Queue `script` as EVALSHA, remembered for a NOSCRIPT re-run."""
        self._scripts[len(self._pipe.command_stack)] = (script, keys, args)
        self._pipe.evalsha(script.sha, len(keys), *keys, *args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send everything in one trip; re-run any script Redis did not have."""
        return self.settle(self._pipe.execute(raise_on_error=False), raise_on_error)

    def settle(self, answers: list[Any], raise_on_error: bool = False) -> list[Any]:
        """`answers` of the wrapped pipeline, executed by its owner, with lost scripts re-run."""
        for index, (script, keys, args) in self._scripts.items():
            if isinstance(answers[index], redis.exceptions.NoScriptError):
                answers[index] = script(keys=keys, args=args)  # loads it, then runs it
        self._scripts.clear()
        if raise_on_error:
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
        return answers


def run_script(
    script: Script,
    pipe: redis.client.Pipeline | StatusPipeline | None,
    *,
    keys: list[Any],
    args: list[Any],
) -> Any:
    """`script` now (None), queued on a StatusPipeline as EVALSHA, or on a plain pipeline."""
    if isinstance(pipe, StatusPipeline):
        pipe.run_script(script, keys, args)
        return None
    return script(keys=keys, args=args, client=pipe)
