import re

import pytest

from pool import Pool


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """One replica and one node with 4 simulated GPUs, for the whole run."""
    p = Pool(tmp_path_factory.mktemp("pool"))
    yield p
    p.stop()


@pytest.fixture()
def tenant(pool, request):
    """A fresh tenant per test: (name, token)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())
    name = ("t-" + slug)[:63].strip("-")
    return name, pool.tenant(name)


@pytest.fixture()
def client(pool, tenant):
    import edupool

    with edupool.Client(pool.endpoints, tenant[1], ca_cert=pool.ca_cert) as c:
        yield c
