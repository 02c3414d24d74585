"""Generates edupool.v1 (protobuf messages and gRPC stubs) from the .proto
files while the package is built, so generated code is never committed.

The .proto files are found in, in order: $EDUPOOL_PROTO_DIR, ../../proto/proto
(building from the repository), ./proto (an sdist, which carries a copy).
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTOS = ["edupool/v1/edupool.proto", "edupool/v1/cluster.proto", "edupool/v1/usage.proto"]


def proto_root() -> Path:
    candidates = [os.environ.get("EDUPOOL_PROTO_DIR"), HERE / ".." / ".." / "proto" / "proto", HERE / "proto"]
    for c in candidates:
        if c and all((Path(c) / p).is_file() for p in PROTOS):
            return Path(c).resolve()
    raise SystemExit(
        "edupool: the .proto files were not found; build from the repository "
        "(clients/python) or set EDUPOOL_PROTO_DIR to the repository's proto/proto"
    )


def generate(out: Path) -> None:
    from grpc_tools import protoc  # a build requirement (pyproject.toml)

    import grpc_tools

    root = proto_root()
    includes = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{includes}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"edupool: protoc failed on {root}")
    (out / "edupool" / "v1" / "__init__.py").write_text(
        '"""Generated from proto/edupool/v1 by grpcio-tools at build time."""\n'
    )


class BuildWithProtos(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


class SdistWithProtos(sdist):
    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, files)
        root = proto_root()
        for p in PROTOS:
            dest = Path(base_dir) / "proto" / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / p, dest)


setup(cmdclass={"build_py": BuildWithProtos, "sdist": SdistWithProtos})
