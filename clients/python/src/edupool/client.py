"""`Client`: the edupool scheduler's job API over gRPC, with the retries and
leader following a replicated pool needs (docs/python.md)."""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

from edupool.errors import EdupoolError, Unavailable, from_rpc_error, metadata_value, retry_after
from edupool.jobs import STATES, Job, JobChange, UsageRow, load_job_file, spec
from edupool.v1 import cluster_pb2_grpc, edupool_pb2 as pb, edupool_pb2_grpc
from edupool.v1 import usage_pb2, usage_pb2_grpc

#: Codes after which a call (or a stream, resumed) is tried again elsewhere.
_RECONNECT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
_STREAM_RECONNECT = _RECONNECT | {grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_LEADER = "x-edupool-leader"
_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def _host_port(endpoint: str) -> str:
    rest = endpoint.strip().split("://", 1)[-1]
    return rest.rstrip("/")


class _Pool:
    """What the sync and asyncio clients share: endpoints, credentials,
    and which replica to try next."""

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        token: Optional[str] = None,
        ca_cert: Union[None, str, bytes, os.PathLike] = None,
        *,
        timeout: float = 30.0,
        attempt_timeout: float = 10.0,
        stale_ok: bool = False,
    ) -> None:
        raw = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
        raw = [e for e in raw if e.strip()]
        if not raw:
            raise ValueError("endpoints: name at least one scheduler replica (host:port)")
        token = token if token is not None else os.environ.get("EDUPOOL_TOKEN")
        if not token:
            raise ValueError("token: pass the tenant's token or set EDUPOOL_TOKEN")
        if ca_cert is None and os.environ.get("EDUPOOL_CA_CERT"):
            ca_cert = os.environ["EDUPOOL_CA_CERT"]
        self._endpoints: List[str] = [_host_port(e) for e in raw]
        tls = ca_cert is not None or any(e.strip().startswith("https://") for e in raw)
        if isinstance(ca_cert, (str, os.PathLike)):
            ca_cert = Path(ca_cert).read_bytes()
        self._ca = ca_cert
        self._tls = tls
        self._metadata: List[tuple] = [("authorization", f"Bearer {token}")]
        if stale_ok:
            self._metadata.append(("x-edupool-stale-ok", "true"))
        self._current = self._endpoints[0]
        self._channels: Dict[str, Any] = {}
        self._closed = False
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout

    def _move_on(self, err: grpc.RpcError, endpoint: str) -> bool:
        """Picks the replica to try next after `err` at `endpoint`; whether
        a follower named the leader."""
        leader = metadata_value(err, _LEADER)
        if leader:
            if leader not in self._endpoints:
                self._endpoints.append(leader)
            if leader != endpoint:
                self._current = leader
                return True
        if self._current == endpoint:
            i = self._endpoints.index(endpoint) if endpoint in self._endpoints else -1
            self._current = self._endpoints[(i + 1) % len(self._endpoints)]
        return False

    def _wait_before_retry(self, err: grpc.RpcError, endpoint: str, attempt: int) -> Optional[float]:
        code = err.code()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Only a rate limit says when to come back; a full queue does not.
            return retry_after(err)
        if code in _RECONNECT:
            if self._move_on(err, endpoint) and attempt == 0:
                return 0.0
            return _backoff(attempt)
        return None


class Client(_Pool):
    """A connection to an edupool pool.

    `endpoints`: the scheduler replicas, as a list or comma-separated
    ("sched-1:7070,sched-2:7070"; https:// or http:// may lead). `token`: the
    tenant's (or an admin's) token; default $EDUPOOL_TOKEN. `ca_cert`: a PEM
    file (or its bytes) to trust for TLS; default $EDUPOOL_CA_CERT. With
    neither a CA nor https://, it speaks plaintext (dev pools only).

    Each call goes to the replica that answered last, follows the leader a
    follower names, tries the other replicas when one is unreachable, waits
    as long as the server asks on RESOURCE_EXHAUSTED, and gives up after
    `timeout` seconds in all (each try at most `attempt_timeout`).
    """

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Closes every connection; open streams end."""
        self._closed = True
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _channel(self, endpoint: str) -> grpc.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            if self._tls:
                creds = grpc.ssl_channel_credentials(root_certificates=self._ca)
                ch = grpc.secure_channel(endpoint, creds, options=_OPTIONS)
            else:
                ch = grpc.insecure_channel(endpoint, options=_OPTIONS)
            self._channels[endpoint] = ch
        return ch

    def _stub(self, kind: str, endpoint: Optional[str] = None) -> Any:
        return stub(kind, self._channel(endpoint or self._current))

    def _call(self, kind: str, method: str, request: Any) -> Any:
        """A unary call with retries (see the class doc)."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            endpoint = self._current
            left = deadline - time.monotonic()
            try:
                rpc = getattr(self._stub(kind, endpoint), method)
                return rpc(request, timeout=max(0.01, min(self.attempt_timeout, left)), metadata=self._metadata)
            except grpc.RpcError as err:
                wait = self._wait_before_retry(err, endpoint, attempt)
                if wait is None or time.monotonic() + wait >= deadline:
                    raise from_rpc_error(err) from None
                time.sleep(wait)
                attempt += 1

    # ------------------------------------------------------------ jobs

    def submit(
        self,
        command: Union[None, str, Sequence[str]] = None,
        gpus: Optional[int] = None,
        *,
        file: Union[None, str, os.PathLike] = None,
        request_id: Optional[str] = None,
        **fields: Any,
    ) -> Job:
        """Submits one job and returns it (pending). Fields are `spec()`'s
        keyword arguments (`job_class="training"`, `walltime="2h"`, ...);
        `file` is a job file whose fields the arguments override.

        A request id (a new UUID unless given) makes retries safe: a
        submit retried after a lost reply returns the same job."""
        resp = self._submit(command, gpus, file, request_id, 0, fields)
        return Job.from_pb(resp.job)

    def submit_array(
        self,
        count: int,
        command: Union[None, str, Sequence[str]] = None,
        gpus: Optional[int] = None,
        *,
        file: Union[None, str, os.PathLike] = None,
        request_id: Optional[str] = None,
        **fields: Any,
    ) -> List[str]:
        """Submits `count` jobs of one spec (all or none), each with
        EDUPOOL_ARRAY_INDEX (0..count-1) and EDUPOOL_ARRAY_SIZE in its
        environment; returns their ids by index."""
        if count < 1:
            raise ValueError("count: an array holds at least one job")
        resp = self._submit(command, gpus, file, request_id, count, fields)
        return list(resp.array_job_ids) or [resp.job.id]

    def _submit(self, command, gpus, file, request_id, array, fields) -> Any:
        return self._call("jobs", "SubmitJob", submit_request(command, gpus, file, request_id, array, fields))

    def get(self, job_id: str) -> Job:
        """The job now (with its command and env)."""
        return Job.from_pb(self._call("jobs", "GetJob", pb.GetJobRequest(id=job_id)).job)

    def list(
        self,
        states: Iterable[str] = (),
        *,
        tenant: str = "",
        full: bool = False,
        page_size: int = 1000,
    ) -> Iterator[Job]:
        """Every job (newest first), page by page as it is iterated. `states`
        filters ("pending", "running", ...); `full` includes command and env."""
        request = list_request(states, tenant, full, page_size)
        while True:
            page = self._call("jobs", "ListJobs", request)
            for j in page.jobs:
                yield Job.from_pb(j)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel(self, job_id: str, reason: str = "") -> Job:
        """Asks the job to stop; returns it (cancelling or already final)."""
        return Job.from_pb(
            self._call("jobs", "CancelJob", pb.CancelJobRequest(id=job_id, reason=reason)).job
        )

    def explain(self, job_id: str) -> str:
        """Why the job is in its state: for a pending job, what holds it back."""
        return self._call("jobs", "ExplainJob", pb.ExplainJobRequest(id=job_id)).explanation

    def usage(self, *, by: str = "day", tenant: str = "", since_ms: int = 0, until_ms: int = 0) -> List[UsageRow]:
        """The usage report as rows (by day, job, model or class)."""
        rows: List[UsageRow] = []
        token = ""
        while True:
            request = usage_pb2.UsageReportRequest(
                tenant=tenant, from_ms=since_ms, to_ms=until_ms, by=by, page_token=token
            )
            page = self._call("usage", "GetUsageReport", request)
            for r in page.rows:
                rows.append(
                    UsageRow(
                        tenant=r.tenant,
                        key=r.key,
                        runs=r.runs,
                        gpu_hours=r.gpu_milli_ms / 1000 / 3_600_000,
                        borrowed_gpu_hours=r.borrowed_gpu_milli_ms / 1000 / 3_600_000,
                        energy_kwh=r.energy_mj / 1000 / 3_600_000,
                        net=r.net_milli / 1000,
                        currency=page.currency,
                    )
                )
            token = page.next_page_token
            if not token:
                return rows

    # ------------------------------------------------------------ streams

    def _stream(
        self,
        method: str,
        request: Callable[[], Any],
        handle: Callable[[Any], Iterator[Any]],
        done: Callable[[], bool],
    ) -> Iterator[Any]:
        """Runs a server stream, reopening it (with `request()` built anew,
        so it resumes) on another replica when one goes away, until `done()`
        or `timeout` seconds pass without a working replica."""
        failures = 0
        last_ok = time.monotonic()
        while not done() and not self._closed:
            endpoint = self._current
            call = getattr(self._stub("jobs", endpoint), method)(request(), metadata=self._metadata)
            try:
                for msg in call:
                    failures = 0
                    last_ok = time.monotonic()
                    yield from handle(msg)
                    if done():
                        return
                # A clean end before `done()`: the replica is shutting down.
                self._move_on(_Ended(), endpoint)
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
                if self._closed:
                    return
                if code not in _STREAM_RECONNECT:
                    raise from_rpc_error(err) from None
                self._move_on(err, endpoint)
                if time.monotonic() - last_ok > self.timeout:
                    raise from_rpc_error(err) from None
            finally:
                call.cancel()
            time.sleep(_backoff(failures))
            failures += 1

    def watch(self, job_id: str) -> Iterator[Job]:
        """The job now, then each change, until it is final."""
        return self._stream(*watch_plan(job_id))

    def wait(self, job_id: str) -> Job:
        """Blocks until the job is final; returns it."""
        job = None
        for job in self.watch(job_id):
            pass
        assert job is not None
        return job

    def watch_all(self, start_revision: int = 0) -> Iterator[JobChange]:
        """Every change to the tenant's jobs, as it happens, forever.

        From now (0: every change made after this call returns), or from a
        revision (a `JobChange.revision` seen before: its changes come
        again, except those this iterator already gave). Across replica
        failures and leader changes it resumes where it was, missing
        nothing; if no replica holds that revision any longer it raises
        `OutOfRange` (list the jobs, then watch from now)."""
        if start_revision == 0:
            # Learn where "now" is before returning, so that every change
            # made after this call returns is seen.
            opening = self._stream(*opening_plan())
            start_revision = next(opening).revision + 1
            opening.close()
        return self._stream(*watch_all_plan(start_revision))

    def logs(self, job_id: str, *, follow: bool = False, stderr: bool = False, offset: int = 0) -> Iterator[bytes]:
        """The job's output as chunks of bytes. Without `follow`, what is
        there now; with it, new output as it is written, until the job has
        ended and all of it was read."""
        stream = pb.LOG_STREAM_STDERR if stderr else pb.LOG_STREAM_STDOUT
        if not follow:
            return self._read_logs(job_id, stream, {"offset": offset})
        return self._stream(*follow_plan(job_id, stream, offset))

    def _read_logs(self, job_id: str, stream: int, pos: Dict[str, Any]) -> Iterator[bytes]:
        while True:
            request = pb.GetJobLogsRequest(id=job_id, stream=stream, offset=pos["offset"])
            chunk = self._call("jobs", "GetJobLogs", request)
            if chunk.data:
                yield bytes(chunk.data)
            pos["offset"] = max(chunk.next_offset, pos["offset"] + len(chunk.data))
            if chunk.eof or not chunk.data:
                return


# What a request is, and how a stream's messages become items and when it
# is done, shared by the sync and asyncio clients. A plan is (method,
# request(), handle(message) -> items, done()); request() is called on each
# (re)connection, so it resumes from what was handled.
Plan = Tuple[str, Callable[[], Any], Callable[[Any], Iterator[Any]], Callable[[], bool]]


def stub(kind: str, channel: Any) -> Any:
    if kind == "jobs":
        return edupool_pb2_grpc.JobServiceStub(channel)
    if kind == "usage":
        return usage_pb2_grpc.UsageServiceStub(channel)
    return cluster_pb2_grpc.ClusterServiceStub(channel)


def submit_request(command, gpus, file, request_id, array, fields) -> Any:
    kwargs: Dict[str, Any] = load_job_file(file) if file is not None else {}
    if command is not None:
        kwargs["command"] = command
    if gpus is not None:
        kwargs["gpus"] = gpus
    kwargs.update(fields)
    if "command" not in kwargs:
        raise ValueError("command: give the job's command (or a job file with one)")
    return pb.SubmitJobRequest(spec=spec(**kwargs), array=array, request_id=request_id or str(uuid.uuid4()))


def list_request(states: Iterable[str], tenant: str, full: bool, page_size: int) -> Any:
    codes = []
    for s in states:
        if s not in STATES:
            raise ValueError(f"states: {s!r} is not one of {', '.join(STATES)}")
        codes.append(STATES[s])
    return pb.ListJobsRequest(
        states=codes,
        tenant=tenant,
        page_size=page_size,
        view=pb.JOB_VIEW_FULL if full else pb.JOB_VIEW_SUMMARY,
    )


def watch_plan(job_id: str) -> Plan:
    last: List[Any] = [None]

    def handle(event: Any) -> Iterator[Job]:
        # A reopened stream starts with the job as it is: skip a repeat.
        if event.job != last[0]:
            last[0] = event.job
            yield Job.from_pb(event.job)

    def done() -> bool:
        return last[0] is not None and Job.from_pb(last[0]).done

    return "WatchJob", lambda: pb.WatchJobRequest(id=job_id), handle, done


def opening_plan() -> Plan:
    return "WatchJobs", lambda: pb.WatchJobsRequest(start_revision=0), lambda m: iter([m]), lambda: False


def watch_all_plan(start_revision: int) -> Plan:
    state: Dict[str, Any] = {"next": start_revision, "rev": -1, "seen": set()}

    def request() -> Any:
        return pb.WatchJobsRequest(start_revision=state["next"])

    def handle(event: Any) -> Iterator[JobChange]:
        if not event.HasField("job"):
            state["next"] = max(state["next"], event.revision + 1)
            return
        # Resumed from the last revision: skip the jobs it already gave.
        if event.revision == state["rev"]:
            if event.job.id in state["seen"]:
                return
        else:
            state["rev"], state["seen"] = event.revision, set()
        state["seen"].add(event.job.id)
        state["next"] = event.revision
        yield JobChange(event.revision, Job.from_pb(event.job))

    return "WatchJobs", request, handle, lambda: False


def follow_plan(job_id: str, stream: int, offset: int) -> Plan:
    pos: Dict[str, Any] = {"offset": offset, "complete": False}

    def request() -> Any:
        return pb.FollowJobLogsRequest(id=job_id, stream=stream, offset=pos["offset"])

    def handle(chunk: Any) -> Iterator[bytes]:
        pos["offset"] = max(chunk.next_offset, pos["offset"] + len(chunk.data))
        pos["complete"] = chunk.complete and (chunk.eof or not chunk.data)
        if chunk.data:
            yield bytes(chunk.data)

    return "FollowJobLogs", request, handle, lambda: pos["complete"]


class _Ended(grpc.RpcError):
    """A stream that ended cleanly before it was done (no status to read)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def trailing_metadata(self) -> tuple:
        return ()


def _backoff(attempt: int) -> float:
    return min(2.0, 0.05 * (2 ** min(attempt, 6))) * (0.5 + random.random() / 2)
