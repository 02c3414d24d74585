"""Jobs as plain Python values, job specs from keyword arguments, and job
files (the YAML or TOML that `edupoolctl job submit -f` reads)."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from edupool.v1 import edupool_pb2 as pb

CLASSES = {
    "inference": pb.JOB_CLASS_INFERENCE,
    "training": pb.JOB_CLASS_TRAINING,
    "batch": pb.JOB_CLASS_BATCH,
    "scavenger": pb.JOB_CLASS_SCAVENGER,
}
STATES = {
    "pending": pb.JOB_STATE_PENDING,
    "assigned": pb.JOB_STATE_ASSIGNED,
    "running": pb.JOB_STATE_RUNNING,
    "cancelling": pb.JOB_STATE_CANCELLING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
    "lost": pb.JOB_STATE_LOST,
}
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "lost"})
_STATE_NAMES = {v: k for k, v in STATES.items()}
_CLASS_NAMES = {v: k for k, v in CLASSES.items()}


def _time(ms: int) -> Optional[_dt.datetime]:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc) if ms else None


@dataclass(frozen=True)
class Job:
    """A job as the scheduler reports it. `raw` is the protobuf message."""

    id: str
    tenant: str
    name: str
    state: str
    job_class: str
    gpus: int
    node: str
    exit_code: Optional[int]
    reason: str
    attempt: int
    submitted_at: Optional[_dt.datetime]
    started_at: Optional[_dt.datetime]
    finished_at: Optional[_dt.datetime]
    command: List[str]
    env: Dict[str, str]
    gpu_seconds: float
    raw: Any = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job reached a final state (nothing will change)."""
        return self.state in FINAL_STATES

    @classmethod
    def from_pb(cls, j: "pb.Job") -> "Job":
        s = j.spec
        return cls(
            id=j.id,
            tenant=j.tenant,
            name=s.name,
            state=_STATE_NAMES.get(j.state, "unknown"),
            job_class=_CLASS_NAMES.get(getattr(s, "class"), "batch"),
            gpus=s.gpus,
            node=j.node,
            exit_code=j.exit_code if j.has_exit_code else None,
            reason=j.reason,
            attempt=j.attempt,
            submitted_at=_time(j.submitted_at_ms),
            started_at=_time(j.started_at_ms),
            finished_at=_time(j.finished_at_ms),
            command=list(s.command),
            env=dict(s.env),
            gpu_seconds=j.gpu_seconds,
            raw=j,
        )


@dataclass(frozen=True)
class JobChange:
    """One change seen by `Client.watch_all`: the job as it is at `revision`
    (the index of the change in the replicated log) or a little later."""

    revision: int
    job: Job


@dataclass(frozen=True)
class UsageRow:
    """One row of a usage report (GPU time in GPU-hours, money in the
    price book's currency)."""

    tenant: str
    key: str
    runs: int
    gpu_hours: float
    borrowed_gpu_hours: float
    energy_kwh: float
    net: float
    currency: str


Duration = Union[int, float, str, _dt.timedelta]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(value: Duration, what: str) -> int:
    """Whole seconds from a number, a timedelta or text like '2h' or '1h30m'."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)):
        if value < 0 or value != int(value):
            raise ValueError(f"{what}: {value!r} is not a whole number of seconds")
        return int(value)
    text = str(value).replace(" ", "")
    parts = re.findall(r"(\d+)([smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{what}: {value!r} is not a duration like 90s, 30m, 2h or 1h30m")
    return sum(int(n) * _UNITS[u] for n, u in parts)


# Keyword arguments of `spec()`, and the job file's fields besides them.
SPEC_FIELDS = (
    "command", "gpus", "name", "job_class", "env", "secret_env", "walltime", "grace_period",
    "on_node_lost", "max_retries", "nodes", "priority", "gpu_fraction", "gpu_model",
    "gpu_class", "gpu_models", "gpu_classes", "min_gpu_memory_bytes", "site",
    "preferred_site", "data_level", "requeue_on_preempt", "cpu_millicores", "memory_bytes",
    "image",
)


def spec(
    command: Union[str, Sequence[str]],
    gpus: int = 1,
    *,
    name: str = "",
    job_class: str = "batch",
    env: Optional[Mapping[str, str]] = None,
    secret_env: Optional[Mapping[str, str]] = None,
    walltime: Optional[Duration] = None,
    grace_period: Optional[Duration] = None,
    on_node_lost: str = "requeue",
    max_retries: int = 0,
    nodes: int = 0,
    priority: int = 0,
    gpu_fraction: int = 0,
    gpu_model: str = "",
    gpu_class: str = "",
    gpu_models: Sequence[str] = (),
    gpu_classes: Sequence[str] = (),
    min_gpu_memory_bytes: int = 0,
    site: str = "",
    preferred_site: str = "",
    data_level: int = 0,
    requeue_on_preempt: bool = True,
    cpu_millicores: int = 0,
    memory_bytes: int = 0,
    image: str = "",
) -> "pb.JobSpec":
    """A `JobSpec` message. `command` is argv (a string is run by `sh -c`);
    `job_class` is inference, training, batch or scavenger; durations are
    seconds or text ('2h'). The scheduler checks the rest and names a wrong
    field in an `InvalidArgument`."""
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    cls = CLASSES.get(job_class.lower())
    if cls is None:
        raise ValueError(f"job_class: {job_class!r} is not one of {', '.join(CLASSES)}")
    lost = {"requeue": pb.ON_NODE_LOST_REQUEUE, "fail": pb.ON_NODE_LOST_FAIL}.get(on_node_lost.lower())
    if lost is None:
        raise ValueError(f"on_node_lost: {on_node_lost!r} is not requeue or fail")
    s = pb.JobSpec(
        name=name,
        command=argv,
        env=dict(env or {}),
        secret_env=dict(secret_env or {}),
        gpus=gpus,
        walltime_seconds=seconds(walltime, "walltime") if walltime is not None else 0,
        grace_period_seconds=seconds(grace_period, "grace_period") if grace_period is not None else 0,
        on_node_lost=lost,
        max_retries=max_retries,
        nodes=nodes,
        priority=priority,
        gpu_fraction=gpu_fraction,
        gpu_model=gpu_model,
        gpu_class=gpu_class,
        gpu_models=list(gpu_models),
        gpu_classes=list(gpu_classes),
        min_gpu_memory_bytes=min_gpu_memory_bytes,
        site=site,
        preferred_site=preferred_site,
        data_level=data_level,
        no_requeue_on_preempt=not requeue_on_preempt,
        cpu_millicores=cpu_millicores,
        memory_bytes=memory_bytes,
        image=image,
    )
    # `class` is a Python keyword: the field is set by name.
    setattr(s, "class", cls)
    return s


def load_job_file(path: Union[str, Path]) -> Dict[str, Any]:
    """A job file (.yaml, .yml or .toml, as `edupoolctl job submit -f`
    reads) as keyword arguments of `spec()`. Unknown fields are refused."""
    path = Path(path)
    text = path.read_text()
    ext = path.suffix.lower()
    if ext in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif ext == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(text)
    else:
        raise ValueError(f"{path}: a job file ends in .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job file is a mapping of fields")
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        if key == "class":
            kwargs["job_class"] = value
        elif key == "min_gpu_memory_gib":
            kwargs["min_gpu_memory_bytes"] = int(value) << 30
        elif key in ("env", "secret_env"):
            kwargs[key] = {str(k): str(v) for k, v in (value or {}).items()}
        elif key in SPEC_FIELDS and key != "job_class":
            kwargs[key] = value
        else:
            raise ValueError(f"{path}: unknown field {key!r}")
    if "command" not in kwargs:
        raise ValueError(f"{path}: the field 'command' is missing")
    return kwargs
