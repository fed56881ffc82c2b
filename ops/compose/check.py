"""`make compose-check`: the compose stack tried from the outside, in its own project.

    python -m ops.compose.check [--keep]

Runs docker-compose.yml as project `conveyor-check` on free host ports, then:
the README's first job with the CLI through the published web port; scale-out
to web=2 / worker=3 with a burst spread over the replicas (which web replica
answered each request, by its X-Request-ID in that container's access log;
which worker ran each job, by the job's `task finished` line in that
container's log); a worker container's main process SIGKILLed from the host
mid-burst (the restart policy brings it back); `docker compose restart redis`
mid-burst; every accepted job terminal and the ledger exact for every user;
every container non-root; every healthcheck healthy, and a SIGSTOPped worker's
unhealthy (then SIGCONT); `/metrics` on the web port and Flower's `/metrics`
closed to the host without credentials; the monitoring profile's Prometheus
(only that service: Grafana has no Debian package to stand in with) scraping
web and workers; `down` and `up` again keeping users, wallets and finished
jobs. The stack is removed with its volumes at the end, also on failure
(`--keep` leaves it up for a look). The last line says what held and the
figures: time to healthy, jobs run, faults survived.

The only override of the compose file (written to a scratch directory) sets,
for the application services, METRICS_TOKEN and higher rate limits: every
request from the host reaches the containers from the one bridge gateway
address, so the per-IP anonymous limit would count the whole check as one
client.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.settings import ROOT
from ops.compose import standins
from ops.compose.engine import run, say
from ops.compose.stack import Stack, free_block, spelled

PROJECT = "conveyor-check"
APP_SERVICES = ("migrate", "web", "events", "worker", "worker_ai", "beat", "flower")
SCALE = {"web": 2, "worker": 3}
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
PASSWORD = "correct horse battery"
CLI = ROOT / ".venv" / "bin" / "conveyor"
REQUEST_TIMEOUT = 15.0
JOBS_DEADLINE = 300.0  # a killed worker's messages come back after BROKER_VISIBILITY_TIMEOUT (90 s)


# --- HTTP from the host -------------------------------------------------------------


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON or text body, headers); status 0 when no answer came."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, answer_headers = exc.code, exc.read(), exc.headers
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc), {}
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, parsed, dict(answer_headers.items())


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@dataclass
class User:
    name: str
    token: str
    login_task: str | None
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.token}"}


@dataclass
class Submission:
    user: User
    amount: int
    port: int
    request_id: str
    task_id: str | None = None
    refusals: list[int] = field(default_factory=list)  # statuses before the 202 (0: no answer)


@dataclass
class Burst:
    name: str
    submissions: list[Submission]

    @property
    def accepted(self) -> list[Submission]:
        return [s for s in self.submissions if s.task_id]


def held_jobs(log: str) -> set[str]:
    """Ledger jobs a worker's JSON log shows received and not finished."""
    received, finished = set(), set()
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("job_kind") != "ledger.transaction":
            continue
        if record.get("message", "").endswith("] received"):
            received.add(record.get("task_id"))
        elif record.get("message") == "task finished":
            finished.add(record.get("task_id"))
    return received - finished


class CheckFailed(Exception):
    """A step whose failure leaves nothing after it worth trying."""


# --- the check ----------------------------------------------------------------------


class ComposeCheck:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.metrics_token = secrets.token_urlsafe(24)
        self.flower_auth = f"ops:{secrets.token_urlsafe(12)}"
        variables = {
            "SECRET_KEY": secrets.token_urlsafe(48),
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "FLOWER_BASIC_AUTH": self.flower_auth,
            "METRICS_TOKEN": self.metrics_token,
        }
        taken: set[int] = set()
        for name, count in (
            ("WEB_PORTS", 10),
            ("EVENTS_PORTS", 10),
            ("FLOWER_PORT", 1),
            ("PROMETHEUS_PORT", 1),
        ):
            start = free_block(28000 + len(taken), count, taken)
            taken.update(range(start, start + count))
            variables[name] = spelled(start, count)
        override = scratch / "check-override.yml"
        override.write_text(yaml.safe_dump(self.override()))
        # No --env-file: the shell's variables and these alone interpolate the file.
        self.stack = Stack(project=PROJECT, variables=variables, extra_files=[override])
        self.results: list[tuple[str, bool, str]] = []
        self.figures: dict[str, str] = {}
        self.jobs: list[Submission] = []
        self.users: list[User] = []
        self.faults: list[str] = []
        self.stopped_pid: int | None = None
        self._web_ports: list[int] | None = None
        self.cli_env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(scratch / "config"),
            "HOME": str(scratch),
        }
        self.cli_env.pop("CONVEYOR_TOKEN", None)

    def override(self) -> dict[str, Any]:
        limits = {
            "RATELIMIT_ANONYMOUS": "600/minute",
            "RATELIMIT_AUTH": "600/minute",
            "RATELIMIT_USER": "6000/minute;100000/day",
        }
        token = {"METRICS_TOKEN": "${METRICS_TOKEN}"}
        services = {name: {"environment": dict(token)} for name in APP_SERVICES}
        services["web"]["environment"].update(limits)
        return {"services": services}

    # -- bookkeeping

    def record(self, name: str, held: bool, detail: str) -> bool:
        self.results.append((name, held, detail))
        say(f"{'HELD  ' if held else 'FAILED'} {name}: {detail}")
        return held

    def step(self, name: str, action: Callable[[], tuple[bool, str]], fault: str = "") -> bool:
        try:
            held, detail = action()
        except CheckFailed:
            raise
        except Exception as exc:
            held, detail = False, f"{type(exc).__name__}: {exc}"
        if held and fault:
            self.faults.append(fault)
        return self.record(name, held, detail)

    def up(self, **options: Any) -> float:
        self._web_ports = None
        return self.stack.up(**options)

    # -- the stack from outside

    def web_ports(self) -> list[int]:
        """Each web replica's published port, in replica order (looked up once per `up`)."""
        if self._web_ports is None:
            count = len(self.stack.containers("web"))
            self._web_ports = [self.stack.port("web", 8000, i) for i in range(1, count + 1)]
        return self._web_ports

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.web_ports()[0]}{path}"

    def sql(self, statement: str) -> list[list[str]]:
        out = self.stack.compose(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "conveyor",
            "-d",
            "conveyor",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-F",
            "\t",
            "-c",
            statement,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def inspect(self, container: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, container]).stdout.strip()

    def health(self, container: str) -> str:
        return self.inspect(container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def logs(self, container: str) -> str:
        done = run(["docker", "logs", container], timeout=120)
        return done.stdout + done.stderr

    # -- users and jobs

    def new_user(self, prefix: str) -> User:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        body = {"username": name, "password": PASSWORD}
        status, answer, _ = http("POST", self.url("/api/v1/auth/register"), body)
        if status != 201:
            raise CheckFailed(f"register {name}: {status} {answer}")
        status, login, _ = http("POST", self.url("/api/v1/auth/login"), body)
        if status != 200:
            raise CheckFailed(f"login {name}: {status} {login}")
        user = User(name, login["access_token"], login.get("task_id"))
        self.users.append(user)
        return user

    def submit(self, item: Submission) -> None:
        """POST the credit, retrying what got no 202 with the same Idempotency-Key for 60 s."""
        key = item.request_id
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, answer, _ = http(
                "POST",
                self.url("/api/v1/transactions", item.port),
                {"type": "credit", "amount": item.amount, "description": "compose-check"},
                {**item.user.headers, "Idempotency-Key": key, "X-Request-ID": item.request_id},
            )
            if status == 202:
                item.task_id = answer["task_id"]
                return
            item.refusals.append(status)
            if status not in (0, 429, 502, 503, 504):
                return  # a refusal no retry will change
            time.sleep(1.0)

    def burst(
        self,
        name: str,
        users: int,
        per_user: int,
        fault: Callable[[], None] | None = None,
        fault_after: int = 0,
    ) -> tuple[Burst, threading.Thread | None]:
        """Credits from fresh users, round-robin over the web replicas, 8 at a time.

        With a fault, it runs in its own thread once `fault_after` submissions
        were accepted, while the rest go on being submitted.
        """
        ports = self.web_ports()
        people = [self.new_user(name) for _ in range(users)]
        items = [
            Submission(
                people[i % users], 100 + (i * 37) % 900, ports[i % len(ports)], uuid.uuid4().hex
            )
            for i in range(users * per_user)
        ]
        done = Counter()
        fired = threading.Event()
        fault_thread: threading.Thread | None = None
        lock = threading.Lock()

        def one(item: Submission) -> None:
            nonlocal fault_thread
            self.submit(item)
            with lock:
                done["accepted" if item.task_id else "refused"] += 1
                if fault and not fired.is_set() and done["accepted"] >= fault_after:
                    fired.set()
                    fault_thread = threading.Thread(target=fault, name=f"fault-{name}")
                    fault_thread.start()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, items))
        result = Burst(name, items)
        self.jobs.extend(result.accepted)
        return result, fault_thread

    def wait_terminal(self, task_ids: list[str], timeout: float = JOBS_DEADLINE) -> dict[str, str]:
        """Job rows' states once all are terminal (or at the deadline)."""
        literal = "'{" + ",".join(task_ids) + "}'::uuid[]"
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            try:
                rows = self.sql(f"SELECT id::text, state FROM jobs WHERE id = ANY({literal})")
                states = dict(rows)
            except RuntimeError:
                pass  # PostgreSQL may be in the middle of a restart
            if len(states) == len(task_ids) and all(s in TERMINAL for s in states.values()):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(2)

    def ledger_of(self, user: User) -> tuple[int, list[dict[str, Any]]]:
        status, wallet, _ = http("GET", self.url("/api/v1/wallet"), None, user.headers)
        if status != 200:
            raise RuntimeError(f"GET /wallet {status}: {wallet}")
        entries: list[dict[str, Any]] = []
        page = 1
        while True:
            path = f"/api/v1/transactions?page={page}&limit=100"
            status, listing, _ = http("GET", self.url(path), None, user.headers)
            if status != 200:
                raise RuntimeError(f"GET {path} {status}: {listing}")
            entries += listing["items"]
            if len(entries) >= listing["total"] or not listing["items"]:
                return wallet["balance"], entries
            page += 1

    def verify_burst(self, burst: Burst) -> tuple[bool, str]:
        """Every accepted job terminal and SUCCESS; each user's ledger exact, nothing doubled."""
        accepted = burst.accepted
        refused = [s for s in burst.submissions if not s.task_id]
        logins = [u.login_task for u in {s.user.name: s.user for s in burst.submissions}.values()]
        ids = [s.task_id for s in accepted] + [t for t in logins if t]
        states = self.wait_terminal(ids)
        problems = []
        unfinished = [i for i in ids if states.get(i) not in TERMINAL]
        if unfinished:
            problems.append(
                f"{len(unfinished)} of {len(ids)} accepted jobs not terminal after "
                f"{JOBS_DEADLINE:.0f} s: {Counter(states.get(i) for i in unfinished)}"
            )
        failed = [s.task_id for s in accepted if states.get(s.task_id) != "SUCCESS"]
        if failed and not unfinished:
            problems.append(f"{len(failed)} credits did not succeed")
        users = {s.user.name: s.user for s in burst.submissions}
        credited = exact = 0
        for user in users.values():
            mine = {s.task_id: s.amount for s in accepted if s.user.name == user.name}
            balance, entries = self.ledger_of(user)
            signed = sum(e["amount"] if e["type"] == "credit" else -e["amount"] for e in entries)
            per_task = Counter(e["task_id"] for e in entries)
            doubled = [t for t in mine if per_task[t] > 1]
            missing = [t for t in mine if per_task[t] == 0]
            foreign = [t for t in per_task if t not in mine and t != user.login_task]
            applied = sum(e["amount"] for e in entries if e["task_id"] in mine)
            credited += sum(mine.values())
            if balance != signed:
                problems.append(f"{user.name}: balance {balance} != sum of entries {signed}")
            if doubled or missing or foreign:
                problems.append(
                    f"{user.name}: {len(doubled)} doubled, {len(missing)} missing, "
                    f"{len(foreign)} unknown entries"
                )
            if applied != sum(mine.values()):
                problems.append(
                    f"{user.name}: credits applied {applied} != accepted {sum(mine.values())}"
                )
            else:
                exact += 1
        retried = sum(1 for s in accepted if s.refusals)
        detail = (
            f"{len(accepted)} accepted ({retried} after a retry with the same Idempotency-Key), "
            f"{len(refused)} never accepted, all terminal; ledger exact for {exact}/{len(users)} "
            f"users (balance == sum of entries == sum of accepted credits, {credited} cents)"
        )
        return (not problems, "; ".join(problems) if problems else detail)

    # -- the steps

    def bring_up(self) -> None:
        started = time.monotonic()
        lines = standins.prepare([*APP_SERVICES, "postgres", "redis", "prometheus"])
        self.figures["base images"] = f"{time.monotonic() - started:.0f} s"
        self.record("base images", True, "; ".join(lines))
        seconds = self.up()
        self.figures["compose up -> healthy"] = f"{seconds:.0f} s"
        self.record("compose up --wait", True, f"all healthy (migrate done) in {seconds:.0f} s")

    def first_job(self) -> tuple[bool, str]:
        env = {
            **self.cli_env,
            "CONVEYOR_URL": self.url(""),
            "CONVEYOR_EVENTS_URL": f"http://127.0.0.1:{self.stack.port('events', 8001)}",
        }
        name = f"ada_{uuid.uuid4().hex[:6]}"
        login = run(
            [str(CLI), "login", "--register", "--username", name, "--password", PASSWORD],
            env=env,
            check=False,
            timeout=60,
        )
        if login.returncode != 0:
            return False, f"conveyor login exited {login.returncode}: {login.stderr[-500:]}"
        submit = run(
            [str(CLI), "submit", "transaction", "--type", "credit", "--amount", "500", "--wait"],
            env=env,
            check=False,
            timeout=120,
        )
        output = submit.stdout + submit.stderr
        match = re.search(r"SUCCESS ledger\.transaction ([0-9a-f-]{36})", output)
        if submit.returncode != 0 or not match:
            return False, f"conveyor submit exited {submit.returncode}: {output[-800:]}"
        self.first = (name, match.group(1))
        return True, f"{name}: conveyor submit transaction --wait -> SUCCESS {match.group(1)}"

    def scale_out(self) -> tuple[bool, str]:
        seconds = self.up(scale=SCALE, build=False)
        self.figures["scale to web=2 worker=3 -> healthy"] = f"{seconds:.0f} s"
        counts = {name: len(self.stack.containers(name)) for name in SCALE}
        return counts == SCALE, f"{counts} healthy in {seconds:.0f} s"

    def non_root(self) -> tuple[bool, str]:
        ids = self.stack.compose("ps", "-q").stdout.split()
        root = []
        checked = 0
        for cid in ids:
            name = self.inspect(cid, "{{.Name}}").lstrip("/")
            rows = run(["docker", "top", cid, "-eo", "uid,pid,comm"]).stdout.splitlines()[1:]
            checked += len(rows)
            root += [f"{name}: {row.split(None, 2)[2]}" for row in rows if row.split()[0] == "0"]
        held = not root and checked > 0
        return held, (
            f"{checked} processes in {len(ids)} containers, none uid 0"
            if held
            else f"running as root: {root}"
        )

    def all_healthy(self) -> tuple[bool, str]:
        ids = self.stack.compose("ps", "-q").stdout.split()
        states = {self.inspect(c, "{{.Name}}").lstrip("/"): self.health(c) for c in ids}
        bad = {name: state for name, state in states.items() if state != "healthy"}
        return not bad, (f"{len(states)} containers healthy" if not bad else f"not healthy: {bad}")

    def spread(self) -> tuple[bool, str]:
        burst, _ = self.burst("spread", users=3, per_user=30)
        held, detail = self.verify_burst(burst)
        webs = self.stack.containers("web")
        ports = self.web_ports()
        by_port = dict(zip(ports, webs, strict=True))
        answered: Counter = Counter()
        misplaced = 0
        logs = {cid: self.logs(cid) for cid in webs}
        for item in burst.accepted:
            found = [cid for cid, text in logs.items() if item.request_id in text]
            if found != [by_port[item.port]]:
                misplaced += 1
            for cid in found:
                answered[self.inspect(cid, "{{.Name}}").lstrip("/")] += 1
        ran = self.worker_spread({s.task_id for s in burst.accepted})
        spread_ok = len(answered) == len(webs) and misplaced == 0 and len(ran) == SCALE["worker"]
        detail += f"; web replicas answered {dict(answered)}; workers ran {dict(ran)}"
        if misplaced:
            detail += f"; {misplaced} requests not in the log of the replica they were sent to"
        return held and spread_ok, detail

    def worker_spread(self, task_ids: set[str]) -> Counter:
        """Which worker container's log says each job finished (container name -> jobs)."""
        ran: Counter = Counter()
        for cid in self.stack.containers("worker"):
            name = self.inspect(cid, "{{.Name}}").lstrip("/")
            for line in self.logs(cid).splitlines():
                if '"task finished"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("task_id") in task_ids:
                    ran[name] += 1
        return ran

    def worker_crash(self) -> tuple[bool, str]:
        victim = self.stack.containers("worker")[1]
        name = self.inspect(victim, "{{.Name}}").lstrip("/")
        restarts_before = int(self.inspect(victim, "{{.RestartCount}}"))
        timeline: dict[str, float] = {}

        def kill() -> None:
            # Paused, PostgreSQL lets no job finish, so what the victim's log shows received
            # and not finished is what it holds when it dies; kill once it holds something.
            postgres = self.stack.containers("postgres")[0]
            for attempt in range(10):
                run(["docker", "pause", postgres])
                try:
                    time.sleep(0.5)
                    log = self.logs(victim)
                    if held_jobs(log) or attempt == 9:
                        pid = int(self.inspect(victim, "{{.State.Pid}}"))
                        os.kill(pid, signal.SIGKILL)
                        timeline["killed"] = time.monotonic()
                        held.update(held_jobs(log))
                        break
                finally:
                    run(["docker", "unpause", postgres])
                time.sleep(0.3)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                restarted = int(self.inspect(victim, "{{.RestartCount}}")) > restarts_before
                if restarted and self.inspect(victim, "{{.State.Running}}") == "true":
                    timeline["running"] = time.monotonic()
                    break
                time.sleep(0.2)

        held: set[str] = set()
        burst, fault = self.burst("crash", users=5, per_user=40, fault=kill, fault_after=30)
        if fault:
            fault.join()
        ok, detail = self.verify_burst(burst)
        settled = time.monotonic() - timeline.get("killed", time.monotonic())
        self.figures["worker kill -9 -> every job terminal"] = f"{settled:.0f} s"
        recovered = held & {s.task_id for s in burst.accepted}
        detail += (
            f"; the killed worker held {len(recovered)} of them, received and unfinished "
            f"(each then applied once, above); all terminal {settled:.0f} s after the kill"
        )
        if "running" not in timeline:
            return False, f"{name} was not running again 120 s after kill -9 of its main process"
        back = timeline["running"] - timeline["killed"]
        deadline = time.monotonic() + 150
        while self.health(victim) != "healthy" and time.monotonic() < deadline:
            time.sleep(2)
        healthy = time.monotonic() - timeline["killed"]
        self.figures["worker kill -9 -> running / healthy"] = f"{back:.1f} s / {healthy:.0f} s"
        state = self.health(victim)
        detail = (
            f"kill -9 of {name}'s main process: running again after {back:.1f} s "
            f"(restart policy), {state} after {healthy:.0f} s; " + detail
        )
        return ok and state == "healthy" and bool(recovered), detail

    def redis_restart(self) -> tuple[bool, str]:
        timeline: dict[str, float] = {}

        marker = uuid.uuid4().hex

        def redis_cli(*args: str) -> str:
            return self.stack.compose("exec", "-T", "redis", "redis-cli", *args).stdout.strip()

        def restart() -> None:
            redis_cli("SET", "conveyor-check:aof-marker", marker)
            started = time.monotonic()
            self.stack.compose("restart", "redis", timeout=120)
            timeline["restart"] = time.monotonic() - started

        burst, fault = self.burst("redis", users=3, per_user=40, fault=restart, fault_after=30)
        if fault:
            fault.join()
        held, detail = self.verify_burst(burst)
        aof = redis_cli("CONFIG", "GET", "appendonly").split()
        kept = redis_cli("GET", "conveyor-check:aof-marker") == marker
        redis_cli("DEL", "conveyor-check:aof-marker")
        self.figures["docker compose restart redis"] = f"{timeline.get('restart', 0):.1f} s"
        detail = (
            f"restart took {timeline.get('restart', 0):.1f} s, appendonly "
            f"{aof[-1] if aof else '?'}, a key written before it "
            f"{'read back' if kept else 'LOST'}; " + detail
        )
        return held and aof[-1:] == ["yes"] and kept, detail

    def stopped_worker_unhealthy(self) -> tuple[bool, str]:
        victim = self.stack.containers("worker")[-1]
        name = self.inspect(victim, "{{.Name}}").lstrip("/")
        if self.health(victim) != "healthy":
            return False, f"{name} was {self.health(victim)} before SIGSTOP"
        pid = int(self.inspect(victim, "{{.State.Pid}}"))
        os.kill(pid, signal.SIGSTOP)
        self.stopped_pid = pid
        started = time.monotonic()
        # up to one interval, then 3 failed tries (each its timeout, then 60 s)
        deadline = started + 400
        while self.health(victim) != "unhealthy" and time.monotonic() < deadline:
            time.sleep(3)
        unhealthy = self.health(victim) == "unhealthy"
        to_unhealthy = time.monotonic() - started
        os.kill(pid, signal.SIGCONT)
        self.stopped_pid = None
        resumed = time.monotonic()
        deadline = resumed + 150
        while self.health(victim) != "healthy" and time.monotonic() < deadline:
            time.sleep(3)
        recovered = self.health(victim) == "healthy"
        to_healthy = time.monotonic() - resumed
        self.figures["SIGSTOP -> unhealthy / SIGCONT -> healthy"] = (
            f"{to_unhealthy:.0f} s / {to_healthy:.0f} s"
        )
        return unhealthy and recovered, (
            f"{name}: unhealthy {to_unhealthy:.0f} s after SIGSTOP"
            if unhealthy
            else f"{name}: still {self.health(victim)} {to_unhealthy:.0f} s after SIGSTOP"
        ) + f", healthy again {to_healthy:.0f} s after SIGCONT" * recovered

    def metrics_private(self) -> tuple[bool, str]:
        seen = []
        ok = True
        for port in self.web_ports():
            url = self.url("/metrics", port)
            bare = http("GET", url)[0]
            bearer = http("GET", url, None, {"Authorization": f"Bearer {self.metrics_token}"})[0]
            ok &= bare in (401, 403) and bearer == 200
            seen.append(f"web :{port} /metrics {bare} bare, {bearer} with the bearer token")
        flower = f"http://127.0.0.1:{self.stack.port('flower', 5555)}/metrics"
        bare = http("GET", flower)[0]
        authed = http("GET", flower, None, basic(self.flower_auth))[0]
        ok &= bare in (401, 403) and authed == 200
        seen.append(f"flower /metrics {bare} bare, {authed} with basic auth")
        return ok, "; ".join(seen) + (
            "" if ok else " (expected 401/403 bare, 200 with credentials)"
        )

    def prometheus_scrapes(self) -> tuple[bool, str]:
        monitoring = Stack(
            project=PROJECT,
            variables=self.stack.variables,
            extra_files=self.stack.extra_files,
            profiles=("monitoring",),
        )
        # Only prometheus (and no scale change: --no-deps); grafana has no stand-in here.
        monitoring.compose("up", "-d", "--wait", "--no-deps", "prometheus", timeout=300)
        port = self.stack.port("prometheus", 9090)
        wanted = {"web": SCALE["web"], "worker": SCALE["worker"] + 1}  # + worker_ai
        deadline = time.monotonic() + 90
        up: Counter = Counter()
        errors: dict[str, str] = {}
        while time.monotonic() < deadline:
            status, answer, _ = http("GET", f"http://127.0.0.1:{port}/api/v1/targets")
            if status == 200:
                targets = answer["data"]["activeTargets"]
                up = Counter(t["labels"]["job"] for t in targets if t["health"] == "up")
                errors = {t["scrapeUrl"]: t["lastError"] for t in targets if t["lastError"]}
                if all(up[job] >= count for job, count in wanted.items()):
                    return True, f"targets up: {dict(up)}"
            time.sleep(3)
        return False, f"targets up {dict(up)}, wanted {wanted}; errors {errors}"

    def persistence(self) -> tuple[bool, str]:
        before_users = self.sql("SELECT count(*) FROM users")[0][0]
        wallets = {u.name: self.ledger_of(u)[0] for u in self.users}
        finished_sql = "SELECT count(*) FROM jobs WHERE state IN ('SUCCESS','FAILURE','REVOKED')"
        finished = self.sql(finished_sql)[0][0]
        self.stack.down()
        seconds = self.up(scale=SCALE, build=False)
        self.figures["down, up -> healthy"] = f"{seconds:.0f} s"
        problems = []
        if self.sql("SELECT count(*) FROM users")[0][0] != before_users:
            problems.append("user count changed")
        changed = {n: b for n, b in wallets.items() if self.ledger_of(self.user(n))[0] != b}
        if changed:
            problems.append(f"{len(changed)} wallets changed")
        now_finished = self.sql(finished_sql)[0][0]
        if int(now_finished) < int(finished):
            problems.append(f"finished jobs {finished} -> {now_finished}")
        name, task = self.first
        env = {**self.cli_env, "CONVEYOR_URL": self.url("")}
        login = run(
            [str(CLI), "login", "--username", name, "--password", PASSWORD],
            env=env,
            check=False,
            timeout=60,
        )
        watch = run([str(CLI), "watch", task], env=env, check=False, timeout=60)
        if login.returncode != 0 or watch.returncode != 0:
            problems.append(f"{name} could not log in again or its first job is not SUCCESS")
        detail = (
            f"down, up in {seconds:.0f} s: {before_users} users, the balances of {len(wallets)}, "
            f"{finished} finished jobs kept; {name} logs in, its first job still SUCCESS"
        )
        return not problems, "; ".join(problems) or detail

    def user(self, name: str) -> User:
        return next(u for u in self.users if u.name == name)

    # -- running it

    def run(self, keep: bool) -> int:
        started = time.monotonic()
        try:
            self.bring_up()
            self.step("every healthcheck healthy", self.all_healthy)
            if not self.step("first job with the CLI", self.first_job):
                raise CheckFailed("the first job did not run")
            if not self.step("scale-out", self.scale_out):
                raise CheckFailed("could not scale out")
            self.step("every container non-root", self.non_root)
            self.step("jobs spread over the replicas", self.spread)
            self.step("worker container SIGKILLed mid-burst", self.worker_crash, "worker SIGKILL")
            self.step("redis restarted mid-burst", self.redis_restart, "redis restart")
            self.step(
                "a stopped worker turns unhealthy", self.stopped_worker_unhealthy, "worker SIGSTOP"
            )
            self.step("metrics need credentials", self.metrics_private)
            self.step("prometheus scrapes web and workers", self.prometheus_scrapes)
            self.step("down and up keep the data", self.persistence, "down/up")
            self.step("every healthcheck healthy at the end", self.all_healthy)
        except CheckFailed as exc:
            self.record("stopped", False, str(exc))
        except Exception as exc:
            self.record("stopped", False, f"{type(exc).__name__}: {exc}")
        finally:
            if self.stopped_pid:
                os.kill(self.stopped_pid, signal.SIGCONT)
            if keep:
                say(
                    f"--keep: project {PROJECT} left up; remove it with "
                    f"docker compose -p {PROJECT} down -v"
                )
            else:
                try:
                    self.stack.down(volumes=True)
                except Exception as exc:
                    self.record("cleanup", False, f"down -v failed: {exc}")
        failed = [name for name, held, _ in self.results if not held]
        held = [name for name, ok, _ in self.results if ok]
        jobs = len(self.jobs) + 1  # + the CLI's first job
        figures = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        verdict = "compose-check: PASSED" if not failed else f"compose-check: FAILED {failed}"
        print(
            f"{verdict}; held: {', '.join(held)}; {jobs} jobs accepted and terminal-checked; "
            f"faults survived: {', '.join(self.faults) or 'none'}; {figures}; "
            f"{time.monotonic() - started:.0f} s in all",
            flush=True,
        )
        return 0 if not failed else 1


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    args = parser.parse_args(list(argv) if argv is not None else None)
    scratch = Path(tempfile.mkdtemp(prefix="compose-check-"))
    try:
        return ComposeCheck(scratch).run(args.keep)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
