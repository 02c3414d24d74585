"""A real edupool pool for the tests: `edupool-scheduler serve` replicas and
`edupool-agent` processes with simulated GPUs, started from the binaries in
$EDUPOOL_BIN_DIR (default: the repository's target/debug), over TLS with a
CA made by `edupoolctl pki`, on free loopback ports, in a temporary
directory. Every process is killed when the pool stops."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, TypeVar

import grpc

ADMIN_TOKEN = "python-test-admin-token-0123456789"
AGENT_TOKEN = "python-test-agent-token-0123456789"
REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def bin_dir() -> Path:
    return Path(os.environ.get("EDUPOOL_BIN_DIR", REPO / "target" / "debug"))


def eventually(what: str, f: Callable[[], Optional[T]], timeout: float = 30.0) -> T:
    """Polls `f` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v is not None:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    def __init__(self, root: Path, replicas: int = 1, nodes: int = 1, gpus: str = "4xA100-80GB"):
        self.root = root
        self.pki = root / "pki"
        self.procs: Dict[str, subprocess.Popen] = {}
        self.ctl(["pki", "init", "--dir", str(self.pki)], json_out=False)
        self.ca_cert = self.pki / "ca.pem"
        self.addrs = {i: f"127.0.0.1:{free_port()}" for i in range(1, replicas + 1)}
        peers = ",".join(f"{i}={a}" for i, a in self.addrs.items())
        for i in self.addrs:
            self.ctl(["pki", "issue-peer", str(i), "--ip", "127.0.0.1", "--dir", str(self.pki)], json_out=False)
        for i, addr in self.addrs.items():
            self.start_replica(i, addr, peers if replicas > 1 else None)
        for n in range(nodes):
            self.start_agent(f"node-{n}", gpus)
        self.wait_for_nodes(nodes)

    @property
    def endpoints(self) -> str:
        return ",".join(self.addrs.values())

    def _spawn(self, name: str, args: List[str], env: Dict[str, str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        p = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn", **env}
        )
        self.procs[name] = p
        return p

    def start_replica(self, i: int, addr: str, peers: Optional[str]) -> None:
        args = [
            str(bin_dir() / "edupool-scheduler"), "serve", "--id", str(i), "--listen", addr,
            "--data-dir", str(self.root / f"replica-{i}"),
            "--ca-cert", str(self.ca_cert), "--cert", str(self.pki / f"peer-{i}.pem"),
            "--key", str(self.pki / f"peer-{i}-key.pem"), "--heartbeat-interval", "200ms",
        ]
        if peers:
            args += ["--peers", peers]
        self._spawn(f"replica-{i}", args, {"EDUPOOL_ADMIN_TOKEN": ADMIN_TOKEN, "EDUPOOL_AGENT_TOKEN": AGENT_TOKEN})
        log = self.root / f"replica-{i}.log"
        eventually(f"replica {i} to listen", lambda: True if b"listening on" in log.read_bytes() else None)

    def start_agent(self, node: str, gpus: str) -> None:
        self.ctl(["pki", "issue-node", node, "--dir", str(self.pki)], json_out=False)
        args = [
            str(bin_dir() / "edupool-agent"), "run", "--scheduler", self.endpoints, "--node-name", node,
            "--simulate-gpus", gpus, "--work-dir", str(self.root / node),
            # The tests' jobs are host processes, run as whoever runs the tests.
            "--allow-root", "--allow-host-jobs",
            "--ca-cert", str(self.ca_cert), "--cert", str(self.pki / f"node-{node}.pem"),
            "--key", str(self.pki / f"node-{node}-key.pem"),
        ]
        self._spawn(node, args, {"EDUPOOL_AGENT_TOKEN": AGENT_TOKEN})

    def ctl(self, args: List[str], token: str = ADMIN_TOKEN, json_out: bool = True):
        cmd = [str(bin_dir() / "edupoolctl")]
        if json_out:
            cmd += ["--endpoint", self.endpoints, "--ca-cert", str(self.ca_cert), "--output", "json"]
        out = subprocess.run(cmd + args, env={**os.environ, "EDUPOOL_TOKEN": token}, capture_output=True)
        if out.returncode != 0:
            raise RuntimeError(f"edupoolctl {' '.join(args)} failed: {out.stderr.decode()}")
        return json.loads(out.stdout) if json_out else out.stdout.decode()

    def wait_for_nodes(self, count: int) -> None:
        def ready():
            nodes = self.ctl(["node", "list"])
            rows = nodes if isinstance(nodes, list) else nodes.get("nodes", [])
            up = [n for n in rows if str(n.get("status", "")).lower() == "ready"]
            return True if len(up) >= count else None

        eventually(f"{count} nodes to be ready", ready, timeout=60)

    def tenant(self, name: str) -> str:
        """Creates tenant `name`; its token."""
        return self.ctl(["tenant", "create", name])["token"]

    def leader(self) -> int:
        """The id of the replica that leads now."""
        from edupool.v1 import cluster_pb2, cluster_pb2_grpc

        creds = grpc.ssl_channel_credentials(self.ca_cert.read_bytes())

        def ask() -> Optional[int]:
            for i, addr in self.addrs.items():
                if self.procs[f"replica-{i}"].poll() is not None:
                    continue
                with grpc.secure_channel(addr, creds) as ch:
                    try:
                        s = cluster_pb2_grpc.ClusterServiceStub(ch).GetStatus(
                            cluster_pb2.GetClusterStatusRequest(), timeout=2,
                            metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")],
                        )
                    except grpc.RpcError:
                        continue
                    if s.role == cluster_pb2.REPLICA_ROLE_LEADER:
                        return i
            return None

        return eventually("a leader", ask, timeout=30)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.kill()
        p.wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
