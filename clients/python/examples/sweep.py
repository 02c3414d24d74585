"""A hyperparameter sweep as a job array: one job per learning rate, each
finds its value from EDUPOOL_ARRAY_INDEX; the results are gathered from the
jobs' output once all of them ended.

    EDUPOOL_ENDPOINT=... EDUPOOL_TOKEN=... EDUPOOL_CA_CERT=ca.pem python3 sweep.py
"""

import os

import edupool

RATES = [0.1, 0.03, 0.01, 0.003, 0.001]
# Each job prints one RESULT line; a real sweep runs its training here.
TRIAL = (
    "import os\n"
    f"rates = {RATES!r}\n"
    "lr = rates[int(os.environ['EDUPOOL_ARRAY_INDEX'])]\n"
    "loss = (lr - 0.01) ** 2 + 0.05\n"
    "print(f'RESULT {lr} {loss:.5f}')\n"
)

with edupool.Client(os.environ.get("EDUPOOL_ENDPOINT", "127.0.0.1:7070")) as pool:
    ids = pool.submit_array(
        len(RATES), ["python3", "-c", TRIAL], gpus=1, name="sweep", image=os.environ.get("EDUPOOL_IMAGE", "")
    )
    print(f"submitted {len(ids)} trials: {ids[0]} .. {ids[-1]}")
    results = {}
    for job_id in ids:
        job = pool.wait(job_id)
        out = b"".join(pool.logs(job_id)).decode()
        for line in out.splitlines():
            if line.startswith("RESULT "):
                _, lr, loss = line.split()
                results[float(lr)] = float(loss)
        print(f"{job_id} {job.state}")
    best = min(results, key=results.get)
    print(f"{len(results)} results; best learning rate {best} (loss {results[best]})")
    assert len(results) == len(RATES)
