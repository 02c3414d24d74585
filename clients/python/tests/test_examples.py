"""The examples run as written, against the test pool."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    "script, expect",
    [
        ("train_and_follow.py", "epoch 2 loss 0.333"),
        ("sweep.py", "best learning rate 0.01"),
        ("course.py", "30 of 30 succeeded"),
    ],
)
def test_example_runs(pool, tenant, script, expect):
    env = {
        **os.environ,
        "EDUPOOL_ENDPOINT": pool.endpoints,
        "EDUPOOL_TOKEN": tenant[1],
        "EDUPOOL_CA_CERT": str(pool.ca_cert),
    }
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert expect in out.stdout, out.stdout
