"""Connections to MySQL or MariaDB, the schema, and transactions.

Every connection sets `time_zone = '+00:00'`, so DATETIME values are UTC
whatever the server's own zone is, and uses utf8mb4 so that any Unicode
text round-trips.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from importlib import resources
from typing import Any, AsyncIterator

import asyncmy
from asyncmy.cursors import DictCursor

from segflowd.config import DatabaseUrl

log = logging.getLogger(__name__)

# READ COMMITTED takes no gap locks, so concurrent ingest and claims do not
# deadlock on neighbouring index ranges. The variable is `tx_isolation` before
# MariaDB 11.1 and `transaction_isolation` on MySQL 8 and MariaDB 11.1+.
_INIT = "SET time_zone = '+00:00', @@session.{variable} = 'READ-COMMITTED'"

# MySQL error codes the daemon handles by name.
ER_DUP_ENTRY = 1062
ER_LOCK_DEADLOCK = 1213
ER_LOCK_WAIT_TIMEOUT = 1205


ER_BAD_DB = 1049


class DatabaseUnavailable(Exception):
    """The server at the configured URL is unreachable, or the database is missing."""

    def __init__(self, url: DatabaseUrl, cause: BaseException) -> None:
        self.url = url
        self.missing_database = error_code(cause) == ER_BAD_DB
        if self.missing_database:
            super().__init__(
                f"the database {url.database!r} does not exist on {url.host}:{url.port}; "
                "`segflowd --config FILE` creates it and applies the schema at its first start"
            )
            return
        super().__init__(
            f"cannot connect to the database at {url.redacted()}: {cause}. "
            "Start a server (for a local MariaDB: "
            "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd) "
            "or set database.url (or SEGFLOW_DATABASE_URL) to one that runs."
        )


def _isolation_variable(version: str) -> str:
    """The session variable that sets the isolation level on this server version."""
    match = re.match(r"(\d+)\.(\d+)", version)
    major, minor = (int(match.group(1)), int(match.group(2))) if match else (8, 0)
    if "mariadb" in version.lower() and (major, minor) < (11, 1):
        return "tx_isolation"
    return "transaction_isolation"


async def _server_version(url: DatabaseUrl) -> str:
    try:
        conn = await asyncmy.connect(**_connect_args(url, with_database=False, init=False))
    except (OSError, asyncmy.errors.OperationalError) as exc:
        raise DatabaseUnavailable(url, exc) from exc
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT VERSION()")
            (version,) = await cur.fetchone()
            return str(version)
    finally:
        conn.close()


_variables: dict[tuple[str, int], str] = {}


async def _init_command(url: DatabaseUrl) -> str:
    key = (url.host, url.port)
    if key not in _variables:
        _variables[key] = _isolation_variable(await _server_version(url))
    return _INIT.format(variable=_variables[key])


def _connect_args(url: DatabaseUrl, with_database: bool = True, init: str | bool = True) -> dict[str, Any]:
    args: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.user,
        "password": url.password,
        "charset": "utf8mb4",
        "autocommit": False,
        "connect_timeout": 5,
    }
    if with_database:
        args["database"] = url.database
    if isinstance(init, str):
        args["init_command"] = init
    return args


async def ensure_database(url: DatabaseUrl) -> bool:
    """Create the database named in the URL if it is missing; return True if created."""
    try:
        conn = await asyncmy.connect(**_connect_args(url, with_database=False, init=False))
    except (OSError, asyncmy.errors.OperationalError) as exc:
        raise DatabaseUnavailable(url, exc) from exc
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (url.database,))
            (exists,) = await cur.fetchone()
            if exists:
                return False
            await cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
            log.info("created database", extra={"action": "create_database", "database": url.database})
            return True
    finally:
        conn.close()


def schema_statements() -> list[str]:
    """Split `schema.sql` into statements at semicolons that end a line."""
    text = resources.files("segflowd").joinpath("schema.sql").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    if "".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


async def apply_schema(url: DatabaseUrl) -> None:
    """Apply `schema.sql`; every statement is idempotent."""
    try:
        conn = await asyncmy.connect(**_connect_args(url, init=await _init_command(url)))
    except (OSError, asyncmy.errors.OperationalError) as exc:
        raise DatabaseUnavailable(url, exc) from exc
    # The server returns "table already exists" notes for idempotent CREATEs,
    # which the driver would log as warnings at every start.
    logging.getLogger("asyncmy").setLevel(logging.ERROR)
    try:
        async with conn.cursor() as cur:
            for statement in schema_statements():
                await cur.execute(statement)
        await conn.commit()
    finally:
        conn.close()


class Database:
    """A connection pool and the transactions taken from it."""

    def __init__(self, url: DatabaseUrl, pool_size: int = 16) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None
        self.in_use = 0

    async def open(self) -> None:
        try:
            init = await _init_command(self.url)
            self._pool = await asyncmy.create_pool(
                minsize=1, maxsize=self.pool_size, **_connect_args(self.url, init=init)
            )
        except (OSError, asyncmy.errors.OperationalError) as exc:
            raise DatabaseUnavailable(self.url, exc) from exc

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """Yield a pooled connection in autocommit-off mode; the caller commits."""
        async with self._pool.acquire() as conn:
            self.in_use += 1
            try:
                yield conn
            finally:
                self.in_use -= 1

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[DictCursor]:
        """Yield a dict cursor inside one transaction, committed on exit and rolled back on error."""
        async with self.connection() as conn:
            try:
                async with conn.cursor(DictCursor) as cur:
                    yield cur
                await conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def fetch_all(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        async with self.transaction() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def fetch_one(self, sql: str, args: Any = None) -> dict[str, Any] | None:
        async with self.transaction() as cur:
            await cur.execute(sql, args)
            return await cur.fetchone()

    async def ping(self) -> bool:
        try:
            await self.fetch_one("SELECT 1 AS ok")
            return True
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            return False


def error_code(exc: BaseException) -> int | None:
    """Return the MySQL error number of a driver exception, or None."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def dump_json(value: Any) -> str:
    """JSON text for a JSON column: compact and with non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def load_json(value: Any) -> Any:
    """Decode a JSON column; MariaDB returns JSON as text."""
    if value is None or isinstance(value, (dict, list)):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return json.loads(value)
