"""Submit a training job and follow its output until it ends.

    EDUPOOL_ENDPOINT=sched-1:7070,sched-2:7070 EDUPOOL_TOKEN=... \
    EDUPOOL_CA_CERT=ca.pem python3 train_and_follow.py
"""

import os
import sys

import edupool

# A stand-in for a training script: three "epochs" with a falling loss.
TRAIN = "import time\nfor e in range(3):\n    print(f'epoch {e} loss {1/(e+1):.3f}', flush=True)\n    time.sleep(0.2)\n"

with edupool.Client(os.environ.get("EDUPOOL_ENDPOINT", "127.0.0.1:7070")) as pool:
    job = pool.submit(
        ["python3", "-c", TRAIN],
        gpus=1,
        name="train-demo",
        job_class="training",
        walltime="10m",
        env={"EPOCHS": "3"},
        # A root filesystem from the nodes' image store; empty: a host process.
        image=os.environ.get("EDUPOOL_IMAGE", ""),
    )
    print(f"submitted {job.id}", flush=True)
    for chunk in pool.logs(job.id, follow=True):
        sys.stdout.write(chunk.decode(errors="replace"))
    done = pool.get(job.id)
    print(f"{done.id} {done.state} (exit code {done.exit_code})")
    sys.exit(0 if done.state == "succeeded" else 1)
