# %% [markdown]
# # A course's lab: 30 students' jobs on the pool
#
# Runs as a script or cell by cell in Jupyter (the `# %%` markers). Set
# EDUPOOL_ENDPOINT, EDUPOOL_TOKEN and EDUPOOL_CA_CERT first (the course's
# tenant token, from its teacher).

# %%
import os

import edupool

pool = edupool.Client(os.environ.get("EDUPOOL_ENDPOINT", "127.0.0.1:7070"))
STUDENTS = [f"student-{n:02d}" for n in range(1, 31)]

# %% Each student's small job: a tenth of a GPU, a minute at most.
jobs = {
    s: pool.submit(
        ["python3", "-c", f"print('hello from {s}', sum(range(1000)))"],
        gpus=1,
        gpu_fraction=100,
        name=s,
        walltime="1m",
        job_class="batch",
        image=os.environ.get("EDUPOOL_IMAGE", ""),
    ).id
    for s in STUDENTS
}
print(f"submitted {len(jobs)} jobs")

# %% Wait for all of them, then one row per student.
rows = []
for student, job_id in jobs.items():
    job = pool.wait(job_id)
    took = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else 0.0
    output = b"".join(pool.logs(job_id)).decode().strip()
    rows.append((student, job.id, job.state, job.exit_code, f"{took:.1f}s", output))

# %% A table: a pandas DataFrame in a notebook when pandas is there, text otherwise.
header = ("student", "job", "state", "exit", "took", "output")
try:
    import pandas as pd  # type: ignore

    display(pd.DataFrame(rows, columns=header))  # type: ignore[name-defined]  # noqa: F821
except (ImportError, NameError):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
succeeded = sum(1 for r in rows if r[2] == "succeeded")
print(f"{succeeded} of {len(rows)} succeeded")
pool.close()
