"""Generate the Python gRPC stubs in server/v1/ from proto/voxline/v1/*.proto.

The stubs are committed (so `pip install .` needs no code generation) and a test checks
that they match the proto; run this after every proto change:

    python scripts/gen_proto.py            # write server/v1/
    python scripts/gen_proto.py --check    # exit 1 if server/v1/ is stale
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
TARGET = ROOT / "server" / "v1"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted((PROTO_ROOT / "voxline" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc mirrors the proto package: voxline/v1/*.py, which is server/v1 once installed.
    return sorted((out_dir / "voxline" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = [f.name for f in files if not (TARGET / f.name).exists()
                 or not filecmp.cmp(f, TARGET / f.name, shallow=False)]
        if args.check:
            if stale:
                print(f"stale stubs in {TARGET}: {', '.join(stale)}; run scripts/gen_proto.py")
                return 1
            print("stubs up to date")
            return 0
        TARGET.mkdir(parents=True, exist_ok=True)
        for f in files:
            (TARGET / f.name).write_bytes(f.read_bytes())
        print(f"wrote {len(files)} files to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
