"""Shared by the scripts that make the fixtures of tests/fixtures/official/ from the official code.

They run under a reference environment that can import the official checkouts (torch and numpy, but no
safetensors package and no fastmine), as ``python scripts/NAME.py``, which puts this folder on sys.path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
                      torch.int32: "I32", torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` in the order given (sort the names first for a canonical file) with `metadata`.

    The safetensors layout: an 8-byte little-endian header length, the JSON header padded with spaces
    to a multiple of 8 bytes (the format aligns the data), then each tensor's raw little-endian data.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} is not written (use one of {list(SAFETENSORS_DTYPES)})")
        array = t.detach().cpu().contiguous().numpy()
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for data in chunks:
            f.write(data)


def write_fixture(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], summary: str) -> None:
    """A fixture with its tensors under sorted names, so that the file does not depend on the order the
    official modules list them in; reported with its size and `summary`."""
    write_safetensors(path, dict(sorted(tensors.items())), metadata)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, {summary}")


def official_commit(checkout: Path | str) -> str:
    """HEAD of the official checkout, recorded so that a fixture names the code that made it (the tests
    expect a full commit hash, so a checkout that is no git work tree is refused)."""
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: no commit for {checkout}: it must be a git checkout of the official repository "
                 f"({result.stderr.strip()})")
    return result.stdout.strip()


def official_arguments(description: str, repo: str, required: tuple[str, ...], fixtures: str,
                       configs: dict | None = None) -> argparse.Namespace:
    """--official (a checkout of `repo` holding the `required` paths), --out (the folder for `fixtures`,
    created) and, where `configs` is given, --configs (a comma-separated subset of its keys, all by
    default). The checkout goes first on sys.path, where its modules import from."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--official", required=True, type=Path, help=f"checkout of {repo}")
    parser.add_argument("--out", required=True, type=Path, help=f"folder for {fixtures}")
    if configs is not None:
        parser.add_argument("--configs", default=",".join(configs),
                            help="comma-separated subset of: " + ",".join(configs))
    args = parser.parse_args()
    missing = [name for name in required if not (args.official / name).exists()]
    if missing:
        sys.exit(f"error: {args.official} is not a checkout of {repo} (no {' and '.join(missing)})")
    if configs is not None:
        unknown = set(args.configs.split(",")) - set(configs)
        if unknown:
            sys.exit(f"error: unknown configs {', '.join(sorted(unknown))}; use some of {', '.join(configs)}")
    sys.path.insert(0, str(args.official.resolve()))
    args.out.mkdir(parents=True, exist_ok=True)
    return args
