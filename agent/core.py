"""The agent: the seed's Software Delivery flow, steps 1-9, one job at a time.

A *job* is a task of the policy with one version (hash) of its package. Each job walks the
state machine of :class:`agent.state.JobState`::

    received -> downloading -> downloaded -> scheduled -> running -> succeeded | failed

Every transition is committed to SQLite, together with the status event that reports it,
*before* the side effect that follows it. The rules that make "kill it at any point, start it
again: nothing lost, nothing run twice" true:

- ``received``/``downloading``: a restart simply downloads again; the fetcher resumes from the
  units already verified on disk, and a package complete in the cache is never fetched again.
- a download attempt that fails for a reason that may pass (server or codebases unreachable,
  multicast and HTTP both failed) is reported as a ``downloading`` event with the reason and
  retried with exponential back-off (from ``AgentConfig.download_retry_base_s``, capped at
  ``retry_cap_s``); the attempt count, the time of the next try and the
  first attempt (TotalTime for getPackageInfo) are in the job's row, so they survive a
  restart. After ``AgentConfig.download_attempts`` attempts the job is ``failed`` with the
  last reason, except that while MaxAgentDownloadTryingTimeMins is on it first tries once
  past that limit (when the server hands out its fallback codebases). A refusal (4xx, a
  snapshot that does not verify) fails the job at once.
- the package cache doubles as the subnet's peer cache (:mod:`agent.cache`).
- a task whose signature does not verify with the trust key (:mod:`mcast.task_sig`) is
  refused at check-in (logged, a ``task-refused`` event): never stored, downloaded or run.
- right before a command runs, its run-as user is resolved (:mod:`agent.runas`) and every
  unit of the cached package is re-hashed against its snapshot (:func:`agent.cache.rehash`);
  either failing fails the job and runs nothing, and a changed package leaves the cache so
  that the next job downloads it again.
- ``running`` is committed before the command starts. A job found ``running`` when the agent
  starts was interrupted (the agent died while the command ran, or before it recorded the
  result): it is reported ``failed`` ("interrupted") and **never re-run**, because installers
  are not idempotent; the administrator re-targets it if it must run again.
- status events carry a UUID made in the transaction of the state change; the outbox resends
  them with back-off until the server acknowledges them, and the server stores an event id
  once, so a resend after a crash is counted once.
- a job whose task left the policy, or whose package got a new hash, before it ran is
  ``superseded`` (not run; the new version is a new job). A job whose package hash is already
  complete in the cache skips the download.

Every request to the server is signed with the computer's secret (:mod:`mcast.fleet_auth`)
and, over https, checks the server's certificate against the pinned CA only
(:mod:`mcast.pinned_tls`); the same context checks https codebases. 401 (a clock out of the
allowed skew, a secret the server does not hold yet) and 429 (rate limited) are retried like
5xx; a certificate the CA did not sign is a refusal (``TlsRefused``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import trio

from mcast.errors import ExitCode, NetworkError
from mcast.fetch import FetchError, FetchProgress, FetchResult, FetchSettings
from mcast.fleet import (
    AgentSettings,
    DocumentError,
    PackageInfo,
    Policy,
    PolicyTask,
    StatusEvent,
    error_text,
    event_xml,
    parse_ack,
    parse_package_info,
    parse_policy,
)
from mcast.fleet_auth import (
    HmacAuth,
    enrolment_xml,
    fingerprint,
    load_secret,
    new_secret,
    write_secret,
)
from mcast.pinned_tls import pinned_context
from mcast.schedule import ScheduleError, decide, parse_schedule
from mcast.snapshot import (
    Snapshot,
    SnapshotError,
    TrustStore,
    load_trust_key,
    load_verified,
)
from mcast.task_sig import TaskSignatureError, verify_task

from .cache import PeerCache, cached_snapshot, rehash, snapshot_path
from .config import AgentConfig, ConfigError
from .runas import RunAs, RunAsError, grant_read
from .runas import resolve as resolve_run_as
from .runner import run_command
from .state import AgentState, Job, JobState, Report, StateError

log = logging.getLogger("agent")

XML = "application/xml"
INTERRUPTED = (
    "interrupted: the agent stopped while the command was running; not re-run "
    "(installers are not idempotent)"
)
# a job in one of these states has its package: a renewal of it is not fetched or run again
_HAS_PACKAGE = frozenset(
    {JobState.DOWNLOADED, JobState.SCHEDULED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED}
)


class Fetcher(Protocol):
    def __call__(
        self,
        snapshot: Snapshot,
        dest: Path,
        codebases: list[str],
        settings: FetchSettings | None = None,
        *,
        progress: Callable[[FetchProgress], None] | None = None,
    ) -> Awaitable[FetchResult]: ...


class Retryable(NetworkError):
    """The server could not be reached or answered 5xx: try again later."""


class Permanent(NetworkError):
    """The server refused the request (4xx) or sent something unusable."""


class TlsRefused(Permanent):
    """The server's certificate does not verify against the pinned CA (or its name)."""

    exit_code = ExitCode.TRUST


def _tls_failure(exc: BaseException) -> str | None:
    """The certificate verification error behind ``exc``, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        seen = seen.__cause__ or seen.__context__
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else None


@dataclass
class CycleResult:
    """What one :meth:`Agent.run_once` did."""

    checked_in: bool = False
    check_in_error: str = ""
    check_in_failure: NetworkError | None = None
    finished: dict[str, str] = field(default_factory=dict)  # task id -> succeeded/failed
    waiting: list[str] = field(default_factory=list)  # task ids not yet done
    retrying: list[str] = field(default_factory=list)  # ... of which the download failed
    outbox_pending: int = 0
    next_wake: float | None = None  # epoch seconds a scheduled job or the outbox is due

    @property
    def ok(self) -> bool:
        return (
            self.checked_in
            and not self.retrying
            and all(s == JobState.SUCCEEDED.value for s in self.finished.values())
            and self.outbox_pending == 0
        )


def _unreachable(url: str, exc: httpx.HTTPError) -> NetworkError:
    why = _tls_failure(exc)
    if why is not None:
        return TlsRefused(
            f"{url}: the server's TLS certificate does not verify against the pinned CA "
            f"(--ca-file): {why}"
        )
    return Retryable(f"cannot reach {url}: {exc.__class__.__name__}: {exc}")


def _default_fetcher() -> Fetcher:
    from mcast.fetch import fetch

    return fetch


class Agent:
    """``Agent(config, fetcher=...)``; ``await run_once()`` or ``await run_forever()``.

    ``fetcher`` has the signature of ``mcast.fetch.fetch`` (the default). ``transport`` is an
    optional httpx transport for talking to the server (tests inject faults with it).
    ``on_event`` receives a dict for every notable thing the agent does (the CLI prints them).
    Only one Agent may use a state directory at a time (an exclusive lock on STATE/agent.lock).
    Construction fails with an :class:`mcast.errors.McastError`: ``StorageError`` for a trust
    key, secret file or CA file that cannot be read, ``TrustError`` for one that is not a key,
    secret or certificate, ``StateError`` for a state directory that cannot be used,
    ``ConfigError`` for one in use by another agent. With ``config.enrol`` a missing secret
    file is created (a new secret, mode 0600) and every run asks the server to enrol it.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        fetcher: Fetcher | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.fetcher: Fetcher = fetcher or _default_fetcher()
        self._transport = transport
        self._on_event = on_event
        self._public = load_trust_key(config.trust_key)
        self._tls = pinned_context(config.ca_file) if config.ca_file else None
        self._secret = self._load_secret()
        self._enrol_due = config.enrol
        try:
            Path(config.state_dir).mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(Path(config.state_dir) / "agent.lock", os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateError(
                f"cannot use state directory {config.state_dir}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise ConfigError(
                f"state directory {config.state_dir} is in use by another agent"
            ) from None
        self.state = AgentState(config.state_dir)
        self.ip = config.agent_ip()
        self._check_in_failures = 0
        self._sent_totaltime: dict[str, int] = {}  # task id -> totaltime of its last attempt
        self._fresh = True
        self.cache = PeerCache(
            self.state, config, lambda: self.settings, lambda: self.discovery_key, self._emit
        )
        self._recover()

    def _load_secret(self) -> bytes | None:
        path = self.config.secret_file
        if path is None:
            return None
        if self.config.enrol and not path.exists():
            write_secret(path, new_secret())
        return load_secret(path)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        self.state.close()
        os.close(self._lock_fd)  # releases the lock (as the kernel does when we die)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def emit(self, kind: str, **fields: Any) -> None:
        """Report something notable to ``on_event`` (the command line prints it)."""
        self._emit(kind, **fields)

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event({"event": kind, "time": round(time.time(), 3), **fields})

    def _recover(self) -> None:
        """A job left ``running`` by a previous life of the agent was interrupted."""
        for job in self.state.jobs(active_only=True):
            if job.state is JobState.RUNNING:
                log.warning("task %s was interrupted while running: reported failed", job.task_id)
                self.state.transition(job, JobState.FAILED, Report(message=INTERRUPTED))
                self._emit("job", task=job.task_id, state="failed", message=INTERRUPTED)

    @property
    def settings(self) -> AgentSettings:
        raw = self.state.get_meta("agent_settings")
        return AgentSettings(**json.loads(raw)) if raw else AgentSettings()

    @property
    def discovery_key(self) -> bytes | None:
        """The site's discovery key from the last policy (None: the server sent none)."""
        raw = self.state.get_meta("discovery_key")
        return bytes.fromhex(raw) if raw else None

    def check_in_interval(self) -> float:
        if self.config.check_in_interval_s is not None:
            return self.config.check_in_interval_s
        return max(60.0, self.settings.check_in_interval_mins * 60.0)

    def backoff(self, attempts: int, base: float | None = None) -> float:
        """Exponential back-off with jitter: base * 2^attempts, capped, times 0.5-1.0."""
        cap = self.config.retry_cap_s
        first = self.config.retry_base_s if base is None else base
        delay = min(cap, first * (2.0 ** min(attempts, 30)))
        return delay * random.uniform(0.5, 1.0)

    def _client(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(self.config.http_timeout_s, connect=5.0)
        auth = None
        if self._secret is not None:  # requests to the server only are signed
            auth = HmacAuth(self.config.guid, self._secret, self.config.server_url)
        verify: ssl.SSLContext | bool = self._tls if self._tls is not None else True
        return httpx.AsyncClient(
            timeout=timeout, transport=self._transport, auth=auth, verify=verify
        )

    # -- the loop ------------------------------------------------------------------------
    async def run_forever(self) -> None:
        """Check in every interval (backing off while the server is unreachable), run due
        jobs and flush the outbox in between. Runs until cancelled."""
        next_check_in = 0.0
        while True:
            now = time.time()
            due = now >= next_check_in
            result = await self.run_once(check_in=due)
            now = time.time()
            if due:
                if result.checked_in:
                    self._check_in_failures = 0
                    next_check_in = now + self.check_in_interval()
                else:
                    self._check_in_failures += 1
                    delay = min(self.backoff(self._check_in_failures), self.check_in_interval())
                    next_check_in = now + delay
                    self._emit("retry", what="check-in", delay_s=round(delay, 2))
            wake = min(next_check_in, result.next_wake or next_check_in)
            await trio.sleep(max(0.05, wake - time.time()))

    async def run_once(self, *, check_in: bool = True) -> CycleResult:
        """One pass: check in (step 1), advance every job as far as it can go now (steps
        2-9), flush the outbox. Never raises for server or command trouble."""
        result = CycleResult()
        async with self._client() as client:
            # a fresh start (or a check-in) tries every pending event once, back-off or not
            await self.flush_outbox(client, force=self._fresh or check_in)
            self._fresh = False
            if check_in:
                try:
                    if self._enrol_due:
                        await self.enrol(client)
                    policy = await self.check_in(client)
                    result.checked_in = True
                    self._accept_policy(policy)
                except (Retryable, Permanent) as exc:
                    result.check_in_error = str(exc)
                    result.check_in_failure = exc
                    log.warning("check-in failed: %s", exc)
                    self._emit("checkin", ok=False, error=str(exc))
            wakes: list[float] = []
            for job in self.state.jobs(active_only=True):
                job, wake = await self._advance(client, job)
                if job.state.terminal:
                    if job.state is not JobState.SUPERSEDED:
                        result.finished[job.task_id] = job.state.value
                else:
                    result.waiting.append(job.task_id)
                    if job.state in (JobState.RECEIVED, JobState.DOWNLOADING):
                        result.retrying.append(job.task_id)
                if wake is not None:
                    wakes.append(wake)
                await self.flush_outbox(client)
            self.cache.prune({j.package_hash for j in self.state.jobs(active_only=True)})
            result.outbox_pending = await self.flush_outbox(client)
            nxt = self.state.next_outbox_try()
            if nxt is not None:
                wakes.append(nxt)
            result.next_wake = min(wakes) if wakes else None
        return result

    # -- step 1: check in ----------------------------------------------------------------
    async def _get(self, client: httpx.AsyncClient, url: str, **params: str) -> bytes:
        try:
            # (an empty params= would wipe a query the URL already has)
            resp = await client.get(url, params=params) if params else await client.get(url)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        if resp.status_code >= 500 or resp.status_code in (401, 429):
            # 401: our clock, or a secret the server does not hold yet; 429: slow down
            raise Retryable(f"{url}: HTTP {resp.status_code}: {error_text(resp.content)}")
        if resp.status_code >= 400:
            raise Permanent(f"{url}: HTTP {resp.status_code}: {error_text(resp.content)}")
        if resp.status_code != 200:
            raise Retryable(f"{url}: unexpected HTTP {resp.status_code}")
        return resp.content

    async def enrol(self, client: httpx.AsyncClient) -> None:
        """Ask the server to enrol this computer's secret (an administrator approves it);
        harmless to repeat. Until it is approved the server answers 403."""
        assert self._secret is not None
        url = f"{self.config.server_url}/Enrol.aspx"
        body = enrolment_xml(self.config.guid, self._secret)
        try:
            resp = await client.post(url, content=body, headers={"Content-Type": XML})
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        fp = fingerprint(self._secret)
        if resp.status_code in (200, 202):
            self._enrol_due = False
            state = "approved" if resp.status_code == 200 else "pending"
            self._emit("enrol", state=state, fingerprint=fp)
            return
        error = f"{url}: HTTP {resp.status_code}: {error_text(resp.content)}"
        self._emit("enrol", state="refused", fingerprint=fp, error=error)
        if resp.status_code >= 500 or resp.status_code in (401, 429):
            raise Retryable(error)
        raise Permanent(error)

    async def check_in(self, client: httpx.AsyncClient) -> Policy:
        data = await self._get(
            client,
            f"{self.config.server_url}/GetClientPolicies.aspx",
            guid=self.config.guid,
            ip=self.ip,
        )
        try:
            policy = parse_policy(data)
        except DocumentError as exc:
            raise Permanent(f"policy: {exc}") from None
        self._emit("checkin", ok=True, tasks=len(policy.tasks))
        return policy

    def _accept_policy(self, policy: Policy) -> None:
        """Step 2: store the settings, record new jobs, supersede those the policy dropped."""
        self.state.set_meta("agent_settings", json.dumps(policy.settings.__dict__))
        key = policy.discovery_key.hex() if policy.discovery_key else ""
        if key != (self.state.get_meta("discovery_key") or ""):
            self.state.set_meta("discovery_key", key)
        self.cache.policy_changed()
        wanted: set[tuple[str, str]] = set()
        for t in policy.tasks:
            try:
                verify_task(self._public, self.config.guid, t)
            except TaskSignatureError as exc:
                # refused before it is stored: never run; the rest of the policy applies
                log.warning("task refused: %s", exc)
                self._emit("task-refused", task=t.task_id, reason=str(exc))
                continue
            if not t.package_hash:
                log.warning("task %s: the server knows no version of its package", t.task_id)
                continue
            kept = self._renewed_job(t)
            if kept is not None:  # the same content, re-signed: that job is this one
                wanted.add((t.task_id, kept.package_hash))
                continue
            wanted.add((t.task_id, t.package_hash))
            job = Job(
                t.task_id,
                t.package_hash,
                t.package_id,
                t.package_name,
                t.command,
                t.schedule,
                t.credentials,
                t.run_from,
                JobState.RECEIVED,
                None,
                None,
                "",
                0,
                0,
                "",
                0,
            )
            msg = f"received {t.package_name} v{t.package_version}"
            if self.state.add_job(job, self.config.guid, Report(message=msg)):
                self._emit(
                    "job",
                    task=t.task_id,
                    state="received",
                    package=t.package_name,
                    hash=t.package_hash,
                )
        for job in self.state.jobs(active_only=True):
            if (job.task_id, job.package_hash) not in wanted and job.state is not JobState.RUNNING:
                self.state.transition(
                    job, JobState.SUPERSEDED, Report(message="superseded"), event=False
                )
                self._emit("job", task=job.task_id, state="superseded")

    def _renewed_job(self, t: PolicyTask) -> Job | None:
        """A job of this task for an earlier version with the same content (``package
        renew`` only re-signed it) that got its package already: it stands for the new
        version, so a renewal never runs a command again. A job still downloading, or one that
        failed before its command ran, gives way to the new version (its snapshot may be the
        one that expired)."""
        if self.state.job(t.task_id, t.package_hash) is not None:
            return None
        for h in t.same_content_as:
            job = self.state.job(t.task_id, h)
            if job is None or job.state not in _HAS_PACKAGE:
                continue
            if job.state is JobState.FAILED and not job.runs:
                continue  # it failed before its command ran (an expired snapshot, say)
            return job
        return None

    # -- steps 2-9 for one job -----------------------------------------------------------
    async def _advance(self, client: httpx.AsyncClient, job: Job) -> tuple[Job, float | None]:
        """Move ``job`` as far as it can go now; returns it and when to look at it again."""
        try:
            schedule = parse_schedule(job.schedule)
        except ScheduleError as exc:
            return self._fail(job, f"bad schedule: {exc}"), None
        if job.state in (JobState.RECEIVED, JobState.DOWNLOADING):
            if job.next_try > time.time():  # a failed attempt backs off (across restarts)
                return job, job.next_try
            job, failure = await self._download(client, job)
            if failure is not None:
                return self._download_failed(job, failure)
        if job.state is JobState.DOWNLOADED:
            job = self._move(
                job,
                JobState.SCHEDULED,
                Report(
                    bytes_multicast=job.bytes_multicast,
                    bytes_http=job.bytes_http,
                    message=f"scheduled {schedule.describe()}",
                ),
            )
        if job.state is not JobState.SCHEDULED:
            return job, None
        decision = decide(schedule, time.time())
        if decision.missed:
            return self._fail(job, f"schedule {schedule.describe()} missed; not run"), None
        if not decision.due:
            return job, decision.next_check
        if not cached_snapshot(self.state, job.package_hash):
            # the cache was removed under us: download it again (nothing has run)
            self.state.forget_package(job.package_hash)
            job = self._move(job, JobState.DOWNLOADING, Report(message="package left the cache"))
            return job, time.time()
        try:
            user = resolve_run_as(job.credentials, self.config.run_as_default)
        except RunAsError as exc:
            return self._fail(job, f"not run: {exc}"), None
        problem = await trio.to_thread.run_sync(rehash, self.state, job.package_hash)
        if problem is not None:
            # never run what the snapshot does not describe; the next job downloads it again
            self.cache.remove(job.package_hash)
            return self._fail(job, f"package changed in the cache, not run: {problem}"), None
        try:
            grant_read(self.state.cache_dir(job.package_hash), user)
        except OSError as exc:
            return self._fail(job, f"not run: cannot open the package to {user.name}: {exc}"), None
        return await self._run(job, user), None

    def _move(
        self, job: Job, new: JobState, report: Report, *, session: str | None = None, **kw: Any
    ) -> Job:
        """Record a transition and report it; ``session`` (the multicast session a download
        joined or led, as 16 hex digits) goes into the event only, when there is one."""
        job = self.state.transition(job, new, report, **kw)
        extra = {} if session is None else {"session": session}
        self._emit(
            "job",
            task=job.task_id,
            state=new.value,
            message=report.message,
            exit_code=report.exit_code,
            bytes_multicast=report.bytes_multicast,
            bytes_http=report.bytes_http,
            route=kw.get("route"),
            **extra,
        )
        return job

    def _download_failed(self, job: Job, reason: str) -> tuple[Job, float | None]:
        """A download attempt failed for a reason that may pass. Report it (a ``downloading``
        event with the reason) and retry with back-off; after ``download_attempts`` attempts
        the job fails, except that while MaxAgentDownloadTryingTimeMins is on and not yet
        passed it keeps trying, so that the server's fallback codebases get their turn."""
        attempts = job.download_attempts + 1
        limit = self.settings.max_trying_time_mins
        sent = self._sent_totaltime.get(job.task_id, 0)
        if attempts >= self.config.download_attempts and (limit == 0 or sent > limit):
            mins = (time.time() - (job.first_try or time.time())) / 60.0
            message = (
                f"download failed {attempts} times in {mins:.1f} min; giving up. Last: {reason}"
            )
            return self._fail(job, message), None
        delay = self.backoff(attempts, self.config.download_retry_base_s)
        retry_at = time.time() + delay
        message = f"download attempt {attempts} failed: {reason}; retrying in {delay:.1f} s"
        job = self._move(job, JobState.DOWNLOADING, Report(message=message), retry_at=retry_at)
        return job, retry_at

    def _fail(self, job: Job, message: str, exit_code: int | None = None) -> Job:
        log.warning("task %s failed: %s", job.task_id, message)
        return self._move(job, JobState.FAILED, Report(exit_code=exit_code, message=message))

    # -- steps 3-6: locate, verify, download ---------------------------------------------
    async def _download(self, client: httpx.AsyncClient, job: Job) -> tuple[Job, str | None]:
        """One download attempt; returns the job and, if the attempt failed for a reason
        that may pass (the server or every codebase unreachable), that reason."""
        if job.state is JobState.RECEIVED:
            job = self._move(job, JobState.DOWNLOADING, Report(message="locating the package"))
        if cached_snapshot(self.state, job.package_hash) is not None:
            return self._move(
                job,
                JobState.DOWNLOADED,
                Report(message="package already in the cache: not downloaded"),
                route="cached",
            ), None
        try:
            info = await self._package_info(client, job)
            if info.hash != job.package_hash:
                # the package changed since the policy was fetched: the new hash is a new job
                return self._move(
                    job,
                    JobState.SUPERSEDED,
                    Report(message=f"package is now {info.hash[:12]}"),
                    event=False,
                ), None
            snap = await self._snapshot(client, info)
        except Retryable as exc:
            log.warning("task %s: %s (will retry)", job.task_id, exc)
            self._emit("retry", what="package", task=job.task_id, error=str(exc))
            return job, f"cannot locate the package: {exc}"
        except (Permanent, SnapshotError, DocumentError) as exc:
            return self._fail(job, f"cannot get the package: {exc}"), None
        return await self._fetch(job, info, snap)

    async def _package_info(self, client: httpx.AsyncClient, job: Job) -> PackageInfo:
        first = job.first_try or time.time()  # persisted when the download first started
        total_mins = int(max(0.0, time.time() - first) // 60)
        self._sent_totaltime[job.task_id] = total_mins
        data = await self._get(
            client,
            f"{self.config.server_url}/getPackageInfo.aspx",
            computer=self.config.guid,
            package=job.package_id,
            ip=self.ip,
            totaltime=str(total_mins),
        )
        return parse_package_info(data)

    async def _snapshot(self, client: httpx.AsyncClient, info: PackageInfo) -> Snapshot:
        data = await self._get(client, info.snapshot_url)
        trust = TrustStore.of(self._public)
        trust.newest.update(self.state.trusted_versions())
        snap = load_verified(data, trust, time.time())  # signature, expiry, rollback
        if snap.package_hash_hex != info.hash:
            raise SnapshotError(
                f"snapshot hash {snap.package_hash_hex[:12]} is not the package's {info.hash[:12]}"
            )
        self.state.save_trusted(trust.newest)
        path = snapshot_path(self.state, info.hash)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return snap

    def fetch_settings(self, job: Job, info: PackageInfo) -> tuple[FetchSettings, list[str]]:
        """Step 5: the multicast prerequisites of the Agent Settings, and why not if not."""
        s = self.settings
        why_not: list[str] = []
        if not s.multicast_enabled:
            why_not.append("multicast is disabled in the Agent Settings")
        if info.size < s.min_multicast_size:
            why_not.append(f"package size {info.size} < minMulticastSize {s.min_multicast_size}")
        if job.run_from != "agent":
            why_not.append(f"runFrom={job.run_from!r} (multicast only downloads to the agent)")
        settings = FetchSettings(
            multicast_enabled=not why_not,
            min_multicast_size=s.min_multicast_size,
            run_from_server=job.run_from == "server",
            max_sessions_per_subnet=max(1, s.max_sessions_per_subnet),
            speed_test=s.speed_test_codebases,
            session_key=info.session_key,
            discovery_key=self.discovery_key,
            interface=self.config.interface,
            discovery_group=self.config.discovery_group,
            discovery_port=self.config.discovery_port,
            rank=self.config.rank,
            yield_bandwidth=self.config.yield_bandwidth,
            hold_s=float(s.multicast_hold_secs),
            min_session_bps=s.min_session_kbps * 1024.0,
            tls=self._tls,
        )
        return settings, why_not

    async def _fetch(self, job: Job, info: PackageInfo, snap: Snapshot) -> tuple[Job, str | None]:
        settings, why_not = self.fetch_settings(job, info)
        dest = self.state.cache_dir(info.hash)

        def progress(p: FetchProgress) -> None:
            self._emit(
                "progress",
                task=job.task_id,
                phase=p.phase,
                verified=p.bytes_verified,
                total=p.bytes_total,
                multicast=p.bytes_multicast,
                http=p.bytes_http,
            )

        try:
            result = await self.fetcher(snap, dest, info.codebase_urls, settings, progress=progress)
        except FetchError as exc:
            log.warning("task %s: download failed: %s (will retry)", job.task_id, exc)
            self._emit("retry", what="download", task=job.task_id, error=str(exc))
            return job, f"download failed: {exc}"
        except Exception as exc:  # a fetcher bug must not kill the agent; retried later
            log.exception("task %s: the fetcher raised", job.task_id)
            self._emit("retry", what="download", task=job.task_id, error=repr(exc))
            return job, f"the download raised {exc!r}"
        if not result.complete:
            self._emit("retry", what="download", task=job.task_id, error="incomplete")
            return job, "download incomplete: " + ("; ".join(result.notes) or "no reason given")
        self.state.mark_package(info.hash, info.name, info.version, info.size, complete=True,
                                session_key=info.session_key)  # fmt: skip
        # why multicast was skipped or failed before HTTP took over reaches the server here
        notes = list(why_not) + list(result.notes)
        msg = f"downloaded via {result.route.value}"
        if result.session_id is not None:  # the server's console lists the sessions reported
            msg += f" in session {result.session_id:016x}"
        msg += f" ({'; '.join(notes)})" if notes else ""
        return self._move(
            job,
            JobState.DOWNLOADED,
            Report(
                bytes_multicast=result.bytes_multicast, bytes_http=result.bytes_http, message=msg
            ),
            route=result.route.value,
            session=None if result.session_id is None else f"{result.session_id:016x}",
        ), None

    # -- steps 7-9: run and report -------------------------------------------------------
    async def _run(self, job: Job, user: RunAs) -> Job:
        # committed before the process starts: a crash from here on is never re-run
        job = self._move(
            job,
            JobState.RUNNING,
            Report(message=f"running {job.command} as {user.name}"),
            count_run=True,
        )
        env = {
            "MCAST_AGENT_GUID": self.config.guid,
            "MCAST_TASK_ID": job.task_id,
            "MCAST_PACKAGE_HASH": job.package_hash,
            "MCAST_PACKAGE_DIR": str(self.state.cache_dir(job.package_hash)),
        }
        res = await run_command(
            job.command,
            self.state.cache_dir(job.package_hash),
            timeout_s=self.config.command_timeout_s,
            env=env,
            tail_bytes=self.config.output_tail_bytes,
            run_as=user,
        )
        self.state.touch_package(job.package_hash)  # the peer cache counts from the run
        report_bytes = {"bytes_multicast": job.bytes_multicast, "bytes_http": job.bytes_http}
        if res.ok:
            return self._move(
                job,
                JobState.SUCCEEDED,
                Report(exit_code=0, message=res.output_tail, **report_bytes),
            )
        if res.error:
            message = res.error
        elif res.timed_out:
            message = (
                f"timed out after {self.config.command_timeout_s:g} s: killed\n" + res.output_tail
            )
        else:
            message = f"exit code {res.exit_code}\n{res.output_tail}"
        return self._move(
            job, JobState.FAILED, Report(exit_code=res.exit_code, message=message, **report_bytes)
        )

    # -- step 9: the outbox --------------------------------------------------------------
    async def flush_outbox(self, client: httpx.AsyncClient, *, force: bool = False) -> int:
        """Post due events, oldest first, until the server stops answering; returns how
        many are still unacknowledged. 4xx drops an event (logged), 5xx and connection
        errors back it off exponentially."""
        url = f"{self.config.server_url}/PostEvent.aspx"
        for ev in self.state.outbox(None if force else time.time()):
            body = event_xml(
                StatusEvent(
                    ev.event_id,
                    self.config.guid,
                    ev.task_id,
                    ev.state,
                    ev.exit_code,
                    ev.bytes_multicast,
                    ev.bytes_http,
                    ev.message,
                    ev.agent_time,
                )
            )
            try:
                resp = await client.post(url, content=body, headers={"Content-Type": XML})
            except httpx.HTTPError as exc:
                self._later(ev.event_id, ev.attempts, f"{exc.__class__.__name__}: {exc}")
                break  # the server is unreachable: do not hammer it with the rest
            if resp.status_code == 200:
                try:
                    ack = parse_ack(resp.content)
                except DocumentError:
                    ack = None
                if ack is not None and ack.event_id == ev.event_id:
                    self.state.ack_event(ev.event_id, ack.result)
                    self._emit(
                        "posted", id=ev.event_id, task=ev.task_id, state=ev.state, result=ack.result
                    )
                    continue
                self._later(ev.event_id, ev.attempts, "malformed acknowledgement")
            elif (
                resp.status_code >= 500 or resp.status_code < 400 or resp.status_code in (401, 429)
            ):
                self._later(ev.event_id, ev.attempts, f"HTTP {resp.status_code}")
                break
            else:
                reason = f"dropped: HTTP {resp.status_code}: {error_text(resp.content)}"
                log.warning("status event %s refused: %s", ev.event_id, reason)
                self.state.ack_event(ev.event_id, reason)
                self._emit("dropped", id=ev.event_id, task=ev.task_id, reason=reason)
        return len(self.state.outbox())

    def _later(self, event_id: str, attempts: int, why: str) -> None:
        delay = self.backoff(attempts)
        self.state.retry_event_later(event_id, time.time() + delay)
        self._emit("retry", what="status", id=event_id, error=why, delay_s=round(delay, 2))
