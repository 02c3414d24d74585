"""`AsyncClient`: the same API as `Client` for asyncio (grpc.aio), with the
same retries, leader following and resumable streams.

    async with edupool.aio.AsyncClient(endpoints, token, ca_cert) as pool:
        job = await pool.submit(["python3", "train.py"], gpus=1)
        async for chunk in pool.logs(job.id, follow=True):
            ...
        changes = await pool.watch_all()
        async for change in changes:
            ...
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator, Iterable, List, Optional, Sequence, Union

import grpc
import grpc.aio

from edupool.client import (
    _OPTIONS,
    _STREAM_RECONNECT,
    Plan,
    _backoff,
    _Ended,
    _Pool,
    follow_plan,
    list_request,
    opening_plan,
    stub,
    submit_request,
    watch_all_plan,
    watch_plan,
)
from edupool.errors import from_rpc_error
from edupool.jobs import Job, JobChange
from edupool.v1 import edupool_pb2 as pb


class AsyncClient(_Pool):
    """`Client` for asyncio; see `edupool.Client` for the arguments."""

    async def close(self) -> None:
        self._closed = True
        for ch in list(self._channels.values()):
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _stub(self, kind: str, endpoint: Optional[str] = None) -> Any:
        endpoint = endpoint or self._current
        ch = self._channels.get(endpoint)
        if ch is None:
            if self._tls:
                creds = grpc.ssl_channel_credentials(root_certificates=self._ca)
                ch = grpc.aio.secure_channel(endpoint, creds, options=_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(endpoint, options=_OPTIONS)
            self._channels[endpoint] = ch
        return stub(kind, ch)

    async def _call(self, kind: str, method: str, request: Any) -> Any:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            endpoint = self._current
            left = deadline - time.monotonic()
            try:
                rpc = getattr(self._stub(kind, endpoint), method)
                return await rpc(request, timeout=max(0.01, min(self.attempt_timeout, left)), metadata=self._metadata)
            except grpc.RpcError as err:
                wait = self._wait_before_retry(err, endpoint, attempt)
                if wait is None or time.monotonic() + wait >= deadline:
                    raise from_rpc_error(err) from None
                await asyncio.sleep(wait)
                attempt += 1

    async def _stream(self, method, request, handle, done) -> AsyncIterator[Any]:
        failures = 0
        last_ok = time.monotonic()
        while not done() and not self._closed:
            endpoint = self._current
            call = getattr(self._stub("jobs", endpoint), method)(request(), metadata=self._metadata)
            try:
                async for msg in call:
                    failures = 0
                    last_ok = time.monotonic()
                    for item in handle(msg):
                        yield item
                    if done():
                        return
                self._move_on(_Ended(), endpoint)
            except grpc.RpcError as err:
                if self._closed:
                    return
                if err.code() not in _STREAM_RECONNECT:  # type: ignore[attr-defined]
                    raise from_rpc_error(err) from None
                self._move_on(err, endpoint)
                if time.monotonic() - last_ok > self.timeout:
                    raise from_rpc_error(err) from None
            finally:
                call.cancel()
            await asyncio.sleep(_backoff(failures))
            failures += 1

    def _run(self, plan: Plan) -> AsyncIterator[Any]:
        return self._stream(*plan)

    async def submit(
        self, command: Union[None, str, Sequence[str]] = None, gpus: Optional[int] = None, *,
        file: Union[None, str, os.PathLike] = None, request_id: Optional[str] = None, **fields: Any,
    ) -> Job:
        request = submit_request(command, gpus, file, request_id, 0, fields)
        return Job.from_pb((await self._call("jobs", "SubmitJob", request)).job)

    async def submit_array(
        self, count: int, command: Union[None, str, Sequence[str]] = None, gpus: Optional[int] = None, *,
        file: Union[None, str, os.PathLike] = None, request_id: Optional[str] = None, **fields: Any,
    ) -> List[str]:
        if count < 1:
            raise ValueError("count: an array holds at least one job")
        resp = await self._call("jobs", "SubmitJob", submit_request(command, gpus, file, request_id, count, fields))
        return list(resp.array_job_ids) or [resp.job.id]

    async def get(self, job_id: str) -> Job:
        return Job.from_pb((await self._call("jobs", "GetJob", pb.GetJobRequest(id=job_id))).job)

    async def list(
        self, states: Iterable[str] = (), *, tenant: str = "", full: bool = False, page_size: int = 1000
    ) -> AsyncIterator[Job]:
        request = list_request(states, tenant, full, page_size)
        while True:
            page = await self._call("jobs", "ListJobs", request)
            for j in page.jobs:
                yield Job.from_pb(j)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def cancel(self, job_id: str, reason: str = "") -> Job:
        resp = await self._call("jobs", "CancelJob", pb.CancelJobRequest(id=job_id, reason=reason))
        return Job.from_pb(resp.job)

    async def explain(self, job_id: str) -> str:
        return (await self._call("jobs", "ExplainJob", pb.ExplainJobRequest(id=job_id))).explanation

    def watch(self, job_id: str) -> AsyncIterator[Job]:
        return self._run(watch_plan(job_id))

    async def wait(self, job_id: str) -> Job:
        job = None
        async for job in self.watch(job_id):
            pass
        assert job is not None
        return job

    async def watch_all(self, start_revision: int = 0) -> AsyncIterator[JobChange]:
        """Awaited, it learns where "now" is; the iterator it returns gives
        every change after that (see `Client.watch_all`)."""
        if start_revision == 0:
            opening = self._run(opening_plan())
            start_revision = (await opening.__anext__()).revision + 1
            await opening.aclose()
        return self._run(watch_all_plan(start_revision))

    async def logs(self, job_id: str, *, follow: bool = False, stderr: bool = False, offset: int = 0) -> AsyncIterator[bytes]:
        stream = pb.LOG_STREAM_STDERR if stderr else pb.LOG_STREAM_STDOUT
        if follow:
            async for chunk in self._run(follow_plan(job_id, stream, offset)):
                yield chunk
            return
        while True:
            chunk = await self._call("jobs", "GetJobLogs", pb.GetJobLogsRequest(id=job_id, stream=stream, offset=offset))
            if chunk.data:
                yield bytes(chunk.data)
            offset = max(chunk.next_offset, offset + len(chunk.data))
            if chunk.eof or not chunk.data:
                return
