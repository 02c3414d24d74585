"""watch_all across reconnects and a leader change; reflection v1alpha."""

import queue
import threading
import time

import pytest

import edupool
from pool import Pool, eventually


def collect(changes, jobs, timeout=60.0):
    """Reads changes until every job in `jobs` was seen final; returns them."""
    got = []
    deadline = time.monotonic() + timeout
    final = set()
    for ch in changes:
        got.append(ch)
        if ch.job.id in jobs and ch.job.done:
            final.add(ch.job.id)
        if final >= set(jobs):
            return got
        assert time.monotonic() < deadline, f"only {final} of {jobs} ended"
    return got


def check_order(got):
    keys = [(c.revision, c.job.id) for c in got]
    assert len(keys) == len(set(keys)), "an event came twice"
    revs = [c.revision for c in got]
    assert revs == sorted(revs)


def test_watch_all_resumes_after_a_reconnect_without_missing_a_change(client):
    changes = client.watch_all()
    first = [client.submit(["true"], gpus=1, name=f"a{i}").id for i in range(3)]
    got = collect(changes, first)
    changes.close()  # disconnected
    last = got[-1].revision
    # Changes made while no one watches.
    second = [client.submit(["true"], gpus=1, name=f"b{i}").id for i in range(3)]
    for j in second:
        client.wait(j)
    resumed = collect(client.watch_all(start_revision=last), second)
    check_order(got)
    check_order(resumed)
    assert {c.job.id for c in resumed} >= set(second)
    assert all(c.revision >= last for c in resumed)
    # Only the revision resumed from comes again (a new iterator cannot
    # know what the last one gave); nothing older.
    again = {(c.revision, c.job.id) for c in resumed} & {(c.revision, c.job.id) for c in got}
    assert {rev for rev, _ in again} <= {last}


def test_a_revision_older_than_the_history_is_out_of_range(client):
    with pytest.raises(edupool.OutOfRange) as e:
        next(client.watch_all(start_revision=1))
    assert "re-list" in e.value.message


def test_watch_all_follows_a_leader_change(tmp_path):
    pool = Pool(tmp_path, replicas=3, nodes=1)
    try:
        token = pool.tenant("ha")
        leader = pool.leader()
        # The watch starts on the leader, which is then killed.
        order = [pool.addrs[leader]] + [a for i, a in pool.addrs.items() if i != leader]
        events: "queue.Queue" = queue.Queue()
        watcher = edupool.Client(order, token, ca_cert=pool.ca_cert, timeout=60)
        stream = watcher.watch_all()

        def read():
            try:
                for ch in stream:
                    events.put(ch)
            except Exception as e:  # handed to the test below
                events.put(e)

        threading.Thread(target=read, daemon=True).start()
        with edupool.Client(order, token, ca_cert=pool.ca_cert, timeout=60) as c:
            before = [c.submit(["true"], gpus=1, name=f"before{i}").id for i in range(2)]
            final = set()

            def saw_final(jobs):
                def check():
                    while not events.empty():
                        ch = events.get()
                        if isinstance(ch, Exception):
                            raise ch
                        got.append(ch)
                        if ch.job.done:
                            final.add(ch.job.id)
                    return True if final >= set(jobs) else None

                return check

            got = []
            eventually("the first jobs to end", saw_final(before), timeout=60)
            pool.kill(f"replica-{leader}")
            after = [c.submit(["true"], gpus=1, name=f"after{i}").id for i in range(2)]
            eventually("the jobs after the leader change to end", saw_final(after), timeout=90)
            assert pool.leader() != leader
            check_order(got)
        watcher.close()
    finally:
        pool.stop()


def test_reflection_v1alpha_lists_the_services(pool):
    grpc_reflection = pytest.importorskip("grpc_reflection.v1alpha.proto_reflection_descriptor_database")
    import grpc

    creds = grpc.ssl_channel_credentials(pool.ca_cert.read_bytes())
    with grpc.secure_channel(pool.endpoints.split(",")[0], creds) as ch:
        db = grpc_reflection.ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
    assert {"edupool.v1.JobService", "grpc.health.v1.Health"} <= services


def test_the_asyncio_client_submits_follows_and_watches(pool, tenant):
    import asyncio

    from edupool.aio import AsyncClient

    async def main():
        async with AsyncClient(pool.endpoints, tenant[1], ca_cert=pool.ca_cert) as c:
            changes = await c.watch_all()
            job = await c.submit("echo one; sleep 0.2; echo two", gpus=1)
            out = b"".join([chunk async for chunk in c.logs(job.id, follow=True)])
            assert out == b"one\ntwo\n"
            async for ch in changes:
                if ch.job.id == job.id and ch.job.done:
                    break
            assert (await c.get(job.id)).state == "succeeded"
            assert [j.id async for j in c.list()] == [job.id]

    asyncio.run(asyncio.wait_for(main(), 60))
