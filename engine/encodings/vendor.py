#!/usr/bin/env python3
"""Reproduce engine/encodings/*.tiktoken.gz: OpenAI's tokenizer files, byte for byte.

tiktoken downloads ``o200k_base.tiktoken`` and ``cl100k_base.tiktoken`` from OpenAI on first
use, which fails on machines that reach only the package registries. The ``bpe-openai`` wheel
on PyPI (MIT) ships both files gzipped. This script fetches that wheel with pip, takes the two
files out of it unchanged, and keeps them only if their decompressed SHA-256 is the one
tiktoken itself checks (``expected_hash`` in ``tiktoken_ext/openai_public.py``): then they are
exactly OpenAI's published files.

    .venv/bin/python engine/encodings/vendor.py       # rewrites engine/encodings/
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "bpe-openai==0.1.4"
# tiktoken 0.14.0, tiktoken_ext/openai_public.py: expected_hash of each published file.
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
OUT = Path(__file__).resolve().parent


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                WHEEL,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("bpe_openai-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for name, expected in EXPECTED_SHA256.items():
                packed = zf.read(f"bpe_openai/data/{name}.tiktoken.gz")
                digest = hashlib.sha256(gzip.decompress(packed)).hexdigest()
                if digest != expected:
                    print(f"{name}: SHA-256 {digest}, expected {expected}; not written", file=sys.stderr)
                    return 1
                (OUT / f"{name}.tiktoken.gz").write_bytes(packed)
                print(f"{name}: {len(packed):,} bytes gzipped, SHA-256 of the file {digest} (matches tiktoken)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
