#!/usr/bin/env python3
"""Masking benchmark: how fast the agent's stream masker passes build output through.

Feeds ``--megabytes`` of typical build output (compiler-like lines full of ``-``
characters, the worst case for secrets that start with ``-----BEGIN``) through
:class:`conveyor.core.masking.StreamMasker` in chunks of several sizes, with the
patterns of one SSH key (40 lines), one token and one password bound, and prints
MB/s per chunk size. Pure CPU, no I/O.

Run:  /work/venv/bin/python bench/masking.py [--megabytes 10] [--key-lines 40]
"""

from __future__ import annotations

import argparse
import base64
import os
import time

from conveyor.core.masking import StreamMasker, secret_patterns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=10)
    parser.add_argument("--key-lines", type=int, default=40)
    args = parser.parse_args()
    lines = (base64.b64encode(os.urandom(48)).decode() for _ in range(args.key_lines))
    key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    patterns = secret_patterns([key, "tok-" + os.urandom(12).hex(), "pw-" + os.urandom(10).hex()])
    line = b"compiling module foo/bar.c -- ok [------] 42%\n"
    data = line * (args.megabytes * 1024 * 1024 // len(line))
    print(
        f"{len(patterns)} patterns, longest {len(patterns[0])} bytes; {len(data)} bytes of output"
    )
    for chunk in (512, 4096, 65536):
        masker = StreamMasker(patterns)
        started = time.perf_counter()
        out = 0
        for i in range(0, len(data), chunk):
            out += len(masker.feed(data[i : i + chunk]))
        out += len(masker.flush())
        elapsed = time.perf_counter() - started
        assert out == len(data)
        print(f"chunks of {chunk:>6} bytes: {len(data) / elapsed / 1e6:6.1f} MB/s")


if __name__ == "__main__":
    main()
