"""Check that the test database server is reachable: `python -m segflowd.testserver URL`.

`make test` runs this first so that a stopped server gives one clear
message instead of a failure in every test.
"""

from __future__ import annotations

import asyncio
import sys

from segflowd.config import parse_database_url
from segflowd.db import DatabaseUnavailable, _server_version


def main(argv: list[str]) -> int:
    raw = argv[1] if len(argv) > 1 else "mysql://root@127.0.0.1:3306/"
    url = parse_database_url(raw.rstrip("/") + "/information_schema")
    try:
        version = asyncio.run(_server_version(url))
    except DatabaseUnavailable as exc:
        message = str(exc).replace(url.redacted(), raw)
        print(f"make test: {message} Or point SEGFLOW_TEST_SERVER at a server.", file=sys.stderr)
        return 1
    print(f"test database server {raw} answers: {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
