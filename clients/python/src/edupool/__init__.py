"""edupool: the Python client of the edupool GPU scheduler.

    import edupool
    with edupool.Client("sched-1:7070,sched-2:7070", token, ca_cert="ca.pem") as c:
        job = c.submit(["python3", "train.py"], gpus=1, job_class="training")
        for chunk in c.logs(job.id, follow=True):
            print(chunk.decode(), end="")

See docs/python.md in the repository. The generated protobuf modules are
`edupool.v1.edupool_pb2` (and `_grpc`, `cluster_pb2`, `usage_pb2`).
"""

from edupool.client import Client
from edupool.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    EdupoolError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from edupool.jobs import FINAL_STATES, Job, JobChange, UsageRow, load_job_file, spec

__all__ = [
    "Client",
    "Job",
    "JobChange",
    "UsageRow",
    "spec",
    "load_job_file",
    "FINAL_STATES",
    "EdupoolError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "ResourceExhausted",
    "FailedPrecondition",
    "Unavailable",
    "OutOfRange",
    "Aborted",
    "DeadlineExceeded",
]
