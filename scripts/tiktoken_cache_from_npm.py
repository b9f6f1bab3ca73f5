"""Put tiktoken's ``o200k_base`` encoding into a tiktoken cache directory without reaching openaipublic.

tiktoken downloads its encodings from ``openaipublic.blob.core.windows.net`` on first use. Where only the package
registries are reachable (this project's CI), the same ranks come from npm's ``tiktoken`` package, in a compact
form; this rebuilds the original ``o200k_base.tiktoken`` file from it, checks it byte for byte against the SHA-256
tiktoken itself expects, and writes it where tiktoken looks (``$TIKTOKEN_CACHE_DIR/<sha1 of the URL>``).

    python3 scripts/tiktoken_cache_from_npm.py .cache/tiktoken && export TIKTOKEN_CACHE_DIR=.cache/tiktoken

Exit 0 when the file is in place (already, or now), 1 when it could not be made (the exact-count test then skips).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "tiktoken@1.0.22"
URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # what tiktoken checks the file against


def rebuild(compact: str) -> bytes:
    """npm's ``bpe_ranks`` (``! <first rank> <base64 token> <base64 token> ...`` runs) as tiktoken's file
    (``<base64 token> <rank>`` per line)."""
    lines: list[str] = []
    rank = 0
    parts = compact.split(" ")
    index = 0
    while index < len(parts):
        if parts[index] == "!":
            rank = int(parts[index + 1])
            index += 2
            continue
        lines.append(f"{parts[index]} {rank}")
        rank += 1
        index += 1
    return ("\n".join(lines) + "\n").encode()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[1]) / hashlib.sha1(URL.encode()).hexdigest()
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        print(f"tiktoken o200k_base: already in {target.parent}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        try:
            packed = (
                subprocess.run(
                    ["npm", "pack", PACKAGE, "--silent"],
                    cwd=scratch,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            with tarfile.open(Path(scratch) / packed) as archive:
                member = archive.extractfile("package/encoders/o200k_base.json")
                assert member is not None
                compact = json.load(member)["bpe_ranks"]
        except (OSError, subprocess.SubprocessError, KeyError, ValueError, AssertionError, IndexError) as exc:
            print(
                f"tiktoken o200k_base: could not fetch {PACKAGE} from npm ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
            return 1
    data = rebuild(compact)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        print(f"tiktoken o200k_base: rebuilt file has SHA-256 {digest}, not tiktoken's {SHA256}", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    print(f"tiktoken o200k_base: written to {target} ({len(data):,} bytes, SHA-256 checked)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
