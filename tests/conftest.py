"""Shared fixtures: a real MariaDB database per test session, clean tables per test."""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any, Callable

import asyncmy
import pytest
import yaml

from segflowd.config import DatabaseUrl, parse_database_url
from segflowd.db import Database, apply_schema, schema_statements

SERVER_URL = os.environ.get("SEGFLOW_TEST_SERVER", "mysql://root@127.0.0.1:3306/")


def _table_names() -> list[str]:
    names = []
    for statement in schema_statements():
        words = statement.split()
        if words[:5] == ["CREATE", "TABLE", "IF", "NOT", "EXISTS"]:
            names.append(words[5])
    return names


TABLES = _table_names()


async def _server_execute(url: DatabaseUrl, statement: str) -> None:
    conn = await asyncmy.connect(host=url.host, port=url.port, user=url.user, password=url.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def database_url() -> DatabaseUrl:
    """A fresh database for this test session, with the schema applied, dropped at the end."""
    name = f"segflow_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = parse_database_url(SERVER_URL.rstrip("/") + "/" + name)
    asyncio.run(_server_execute(url, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    asyncio.run(apply_schema(url))
    yield url
    asyncio.run(_server_execute(url, f"DROP DATABASE IF EXISTS `{name}`"))


async def truncate_all(db: Database) -> None:
    async with db.transaction() as cur:
        for table in TABLES:
            await cur.execute(f"DELETE FROM {table}")


@pytest.fixture
async def db(database_url: DatabaseUrl) -> Database:
    """An open pool on the session database, with every table emptied first."""
    database = Database(database_url, pool_size=8)
    await database.open()
    await truncate_all(database)
    yield database
    await database.close()


@pytest.fixture
def write_config(tmp_path: Path, database_url: DatabaseUrl) -> Callable[..., Path]:
    """Write a segflow.yaml into tmp_path from a base config plus overrides.

    `files` maps relative paths to file contents written beside the config;
    a top-level override key replaces that whole section.
    """

    def write(overrides: dict[str, Any] | None = None, files: dict[str, str] | None = None, raw: str | None = None) -> Path:
        for relative, content in (files or {}).items():
            target = tmp_path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(content), encoding="utf-8")
        path = tmp_path / "segflow.yaml"
        if raw is not None:
            path.write_text(textwrap.dedent(raw), encoding="utf-8")
            return path
        config: dict[str, Any] = {
            "database": {"url": database_url.raw},
            "http": {
                "listen": "127.0.0.1:0",
                "public_url": "http://127.0.0.1:8080",
                "api_keys": ["test-key"],
                "secret": "test-secret-value",
            },
            "email": {"from": "Acme <hello@acme.test>", "provider": "outbox", "outbox_dir": "outbox"},
        }
        config.update(overrides or {})
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    return write


API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def clock():
    """A fake clock at a fixed instant; tests move it with advance()."""
    from datetime import datetime

    from segflowd.clock import FakeClock

    return FakeClock(datetime(2026, 3, 1, 12, 0, 0))


@pytest.fixture
def make_services(db, clock, write_config):
    """Build Services on the test database from config overrides (see write_config)."""
    from segflowd.config import load_config
    from segflowd.services import Services

    def make(overrides: dict[str, Any] | None = None, files: dict[str, str] | None = None) -> Any:
        return Services.build(load_config(write_config(overrides, files)), db, clock)

    return make


@pytest.fixture
def api(aiohttp_client, make_services):
    """Start the HTTP app on loopback and return (client, services); background tasks off."""
    from segflowd.http.app import build_app

    async def start(overrides: dict[str, Any] | None = None, files: dict[str, str] | None = None, background: bool = False):
        services = make_services(overrides, files)
        client = await aiohttp_client(build_app(services, run_background=background))
        return client, services

    return start
