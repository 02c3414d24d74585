"""Submit, follow, retry, page and list against a real pool."""

import uuid

import grpc
import pytest

import edupool
from pool import Pool


def test_submit_and_follow_logs_to_the_end(client):
    job = client.submit(
        "for i in 1 2 3; do echo line $i; sleep 0.3; done", gpus=1, name="count", job_class="training"
    )
    assert job.state == "pending" and job.job_class == "training"
    out = b"".join(client.logs(job.id, follow=True))
    assert out == b"line 1\nline 2\nline 3\n"
    done = client.get(job.id)
    assert done.state == "succeeded" and done.exit_code == 0
    assert client.wait(job.id).state == "succeeded"


def test_job_files_and_errors_name_the_field(client, tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("name: from-yaml\ncommand: [echo, hi]\ngpus: 1\nclass: inference\nwalltime: 10m\n")
    job = client.submit(file=yaml_file)
    assert (job.name, job.job_class) == ("from-yaml", "inference")
    assert job.raw.spec.walltime_seconds == 600
    toml_file = tmp_path / "train.toml"
    toml_file.write_text('command = ["echo", "hi"]\ngpus = 1\nclass = "batch"\n')
    # Arguments override the file's fields.
    assert client.submit(file=toml_file, name="from-toml").name == "from-toml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: [echo]\ngpu: 1\n")
    with pytest.raises(ValueError, match="unknown field 'gpu'"):
        client.submit(file=bad)

    with pytest.raises(edupool.InvalidArgument) as e:
        client.submit(["echo"], gpus=1, gpu_fraction=1500)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "gpu_fraction" in e.value.message
    with pytest.raises(edupool.NotFound) as e:
        client.get("j-999999")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_a_retried_submit_does_not_duplicate(client):
    key = str(uuid.uuid4())
    first = client.submit(["sleep", "0"], gpus=1, name="once", request_id=key)
    again = client.submit(["sleep", "0"], gpus=1, name="once", request_id=key)
    assert again.id == first.id
    assert [j.id for j in client.list() if j.name == "once"] == [first.id]
    with pytest.raises(edupool.AlreadyExists):
        client.submit(["sleep", "1"], gpus=1, name="once", request_id=key)


def test_cancel_and_explain(client):
    job = client.submit(["sleep", "30"], gpus=1, name="long")
    assert client.explain(job.id)
    client.cancel(job.id, reason="not needed")
    assert client.wait(job.id).state == "cancelled"


def test_paging_through_2500_jobs(tmp_path):
    # A pool of its own whose node is cordoned: the jobs stay pending.
    pool = Pool(tmp_path, nodes=1)
    try:
        pool.ctl(["node", "cordon", "node-0"])
        token = pool.tenant("paging")
        with edupool.Client(pool.endpoints, token, ca_cert=pool.ca_cert) as c:
            ids = c.submit_array(2500, ["true"], gpus=1, name="page")
            assert len(ids) == 2500
            seen = [j.id for j in c.list(page_size=1000)]
            assert len(seen) == 2500 and set(seen) == set(ids)
            assert len([j for j in c.list(states=["pending"], page_size=300)]) == 2500
    finally:
        pool.stop()


def test_usage_report_rows(client):
    client.wait(client.submit(["true"], gpus=1).id)
    rows = client.usage(by="job")
    assert all(isinstance(r, edupool.UsageRow) for r in rows)
