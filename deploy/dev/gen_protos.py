"""Generate Python gRPC stubs (+ .pyi) from protos/ into a package directory.

The generated modules import each other by their proto package (`outreach.preferences.v1`);
we rewrite those imports to be relative so they live inside `common.proto` without
claiming a top-level `outreach` package.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def main(out: str) -> int:
    target = Path(out)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={target}",
        f"--grpc_python_out={target}",
        f"--mypy_out={target}",
        *files,
    ]
    import os

    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    if protoc.main(args) != 0:
        return 1
    for path in target.rglob("*"):
        if path.is_dir():
            (path / "__init__.py").touch()
    (target / "__init__.py").write_text('"""Generated gRPC stubs (make protos). Do not edit."""\n')
    for path in target.rglob("*.py*"):
        text = path.read_text()
        fixed = re.sub(
            r"^from outreach\.preferences\.v1 import ", "from . import ", text, flags=re.MULTILINE
        )
        if fixed != text:
            path.write_text(fixed)
    print(f"generated {len(files)} proto file(s) into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "common" / "proto")))
