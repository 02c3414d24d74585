"""The retry rules, without a pool: what the client does after an error."""

import grpc

from edupool.client import Client


class Refusal(grpc.RpcError):
    def __init__(self, code, metadata=()):
        self._code, self._md = code, tuple(metadata)

    def code(self):
        return self._code

    def details(self):
        return "refused"

    def trailing_metadata(self):
        return self._md


def make():
    return Client("a:1,b:2,c:3", token="t")


def test_a_follower_naming_the_leader_is_left_for_it():
    c = make()
    wait = c._wait_before_retry(Refusal(grpc.StatusCode.UNAVAILABLE, [("x-edupool-leader", "c:3")]), "a:1", 0)
    assert (wait, c._current) == (0.0, "c:3")


def test_an_unreachable_replica_is_left_for_the_next():
    c = make()
    assert c._wait_before_retry(Refusal(grpc.StatusCode.UNAVAILABLE), "a:1", 0) > 0
    assert c._current == "b:2"


def test_the_rate_limits_wait_is_honoured_and_other_limits_are_not_retried():
    c = make()
    limited = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, [("x-edupool-retry-after-ms", "250")])
    assert c._wait_before_retry(limited, "a:1", 0) == 0.25
    assert c._wait_before_retry(Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED), "a:1", 0) is None
    assert c._wait_before_retry(Refusal(grpc.StatusCode.INVALID_ARGUMENT), "a:1", 0) is None
