"""The cyclic garbage collector's settings for a long-running server process.

CPython collects its youngest generation every 700 net allocations of
container objects, and a request's objects that outlive the request (a
keep-alive connection's parser and timeout, a greenlet's frames while it
waits) are promoted to the older generations, so full collections come every
few seconds under load. Each walks every tracked object in the process: the
app's own modules, routes and pools, and every open connection's greenlet. With
10,000 waiting clients (the bench's crowd alone) a web worker spent about a tenth of its
CPU in the collector, in pauses of 120-220 ms each (each one stalls every
request the worker holds).

`tune_collector`, once a process has loaded everything it keeps for life:
- `gc.freeze()` moves those start-up objects out of the collector's sight
  (they are never garbage), so no collection walks them again;
- the youngest generation is collected every YOUNG_THRESHOLD allocations
  rather than 700, so most of a request's objects are freed by reference
  counting before a collection sees them, and the older generations fill
  and are walked about seventy times less often.

Garbage in reference cycles is still collected, only later: memory grows by
at most what YOUNG_THRESHOLD objects hold between collections.

A process that forks children (Celery's prefork pool) collects and freezes
before it forks: a collection walks every object, writing to each, and in a
forked child that copies every page it shares with its parent (a prefork
worker at -c 2 measured 30 MiB more unshared memory when the children and
the parent collected after the fork). After a fork, `collect=False` only
freezes (which touches no object) and sets the thresholds.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
# Collections of one generation before the next older one is collected too.
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 10


def tune_collector(*, collect: bool = True) -> None:
    """Freeze what the process holds now and collect the young generation less often.

    `collect`: first collect the garbage start-up left (so it is not frozen
    with the rest); False where that would copy pages shared with a parent.
    """
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
