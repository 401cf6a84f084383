"""The `segflowd` command as a user runs it: start, SIGTERM, bad config, check."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import aiohttp
import asyncmy
import pytest
import yaml

from daemon_process import Daemon, free_port

AUTH = {"Authorization": "Bearer test-key"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segflowd", *args], capture_output=True, text=True, timeout=60)


async def database_exists(database_url, name: str) -> bool:
    conn = await asyncmy.connect(host=database_url.host, port=database_url.port, user=database_url.user,
                                 password=database_url.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (name,))
            return (await cur.fetchone())[0] == 1
    finally:
        conn.close()


async def drop_database(database_url, name: str) -> None:
    conn = await asyncmy.connect(host=database_url.host, port=database_url.port, user=database_url.user,
                                 password=database_url.password)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


@pytest.fixture
def fresh_database(database_url):
    """The name of a database that does not exist yet; dropped after the test."""
    name = f"segflow_test_daemon_{uuid.uuid4().hex[:8]}"
    yield name
    asyncio.run(drop_database(database_url, name))


def daemon_config(write_config, database_url, name: str, **overrides):
    url = f"mysql://{database_url.user}@{database_url.host}:{database_url.port}/{name}"
    return write_config({"database": {"url": url}, **overrides})


async def test_daemon_creates_database_serves_and_drains_on_sigterm(write_config, database_url, fresh_database):
    daemon = Daemon(daemon_config(write_config, database_url, fresh_database))
    try:
        url = await asyncio.get_running_loop().run_in_executor(None, daemon.wait_ready)
        assert await database_exists(database_url, fresh_database)
        answered: list[int] = []
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200

            async def send(i: int) -> None:
                async with session.post(f"{url}/api/user/u{i}/event/e", json={}, headers=AUTH) as response:
                    answered.append(response.status)

            # SIGTERM lands while these requests are in flight.
            tasks = [asyncio.create_task(send(i)) for i in range(100)]
            await asyncio.sleep(0.05)
            exit_code = await asyncio.get_running_loop().run_in_executor(None, daemon.terminate)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert exit_code == 0, daemon.output()
        assert all(status == 201 for status in answered)
        failed = [r for r in results if isinstance(r, Exception)]
        # Requests that had not reached the server before it closed get a
        # connection error and were not stored; every 201 was committed.
        assert len(answered) + len(failed) == 100
        conn = await asyncmy.connect(host=database_url.host, port=database_url.port, user=database_url.user,
                                     database=fresh_database)
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM events")
            assert (await cur.fetchone())[0] == len(answered)
        conn.close()
        assert "stopped" in daemon.output()
    finally:
        daemon.kill()


async def test_bad_config_stops_before_touching_database(write_config, database_url, fresh_database):
    path = daemon_config(write_config, database_url, fresh_database)
    config = yaml.safe_load(path.read_text())
    config["segments"] = {"everyone": {"sql": "SELECT id FROM users"}}
    config["campaigns"] = {"onboarding": {"segments": ["everyone"], "flow": "flows.missing:nothing", "behavior": "static"}}
    config["email"]["provdier"] = "smtp"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("--config", str(path))
    assert result.returncode == 1
    assert "email.provdier: unknown key" in result.stderr
    assert not await database_exists(database_url, fresh_database)


def test_check_lists_errors_and_exits_1(write_config):
    path = write_config(raw="""
database: {url: "mysql://root@127.0.0.1:3306/x"}
http: {api_keys: [], secret: short}
email: {from: nobody}
""")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 1
    assert "http.api_keys: expected at least one API key" in result.stderr
    assert "http.secret: expected at least 8 characters" in result.stderr
    assert "email.from: expected an address" in result.stderr


def test_check_example_config_passes():
    result = run_cli("check", "--config", "segflow.yaml", "--offline")
    assert result.returncode == 0, result.stderr
    assert "OK:" in result.stdout


def test_check_db_names_url_when_server_is_down(write_config):
    port = free_port()
    path = write_config({"database": {"url": f"mysql://root@127.0.0.1:{port}/segflow"}})
    result = run_cli("check-db", "--config", str(path))
    assert result.returncode == 1
    assert f"mysql://root@127.0.0.1:{port}/segflow" in result.stderr
    assert "start-stop-daemon" in result.stderr


def test_testserver_check_names_url(write_config):
    port = free_port()
    result = subprocess.run([sys.executable, "-m", "segflowd.testserver", f"mysql://root@127.0.0.1:{port}/"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"mysql://root@127.0.0.1:{port}/" in result.stderr


def test_missing_config_argument():
    result = run_cli()
    assert result.returncode == 2
    assert "--config is required" in result.stderr


def test_logs_never_contain_api_key(write_config, database_url, fresh_database):
    path = daemon_config(write_config, database_url, fresh_database)
    daemon = Daemon(path)
    try:
        url = daemon.wait_ready()
        import urllib.request

        request = urllib.request.Request(f"{url}/api/user/u1", data=json.dumps({}).encode(), headers=AUTH, method="POST")
        urllib.request.urlopen(request, timeout=10).read()
        bad = urllib.request.Request(f"{url}/api/user/u1", data=b"{}", headers={"Authorization": "Bearer leaked-guess"}, method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(bad, timeout=10)
        assert daemon.terminate() == 0
        output = daemon.output()
        assert "test-key" not in output
        assert "leaked-guess" not in output
        assert "test-secret-value" not in output
    finally:
        daemon.kill()


async def test_segment_command_uses_shifted_clock(write_config, db):
    from datetime import datetime

    async with db.transaction() as cur:
        await cur.execute("INSERT INTO users (id, attributes, created_at, updated_at) VALUES ('old-buyer', '{}', %s, %s)",
                          (datetime(1998, 1, 1), datetime(1998, 1, 1)))
        await cur.execute("INSERT INTO events (user_id, name, attributes, created_at, received_at) "
                          "VALUES ('old-buyer', 'purchase', '{}', %s, %s)", (datetime(1998, 1, 1), datetime(1998, 1, 1)))
    segments = {"recent": {"sql": "SELECT user_id AS id FROM events WHERE created_at > NOW() - INTERVAL 90 DAY"}}
    wall = write_config({"segments": segments})
    wall_result = run_cli("segment", "recent", "--config", str(wall))
    assert wall_result.returncode == 0, wall_result.stderr
    assert "segment recent: 0 users" in wall_result.stdout

    shifted = write_config({"segments": segments, "clock": {"start": "1998-02-01T00:00:00Z"}})
    shifted_result = run_cli("segment", "recent", "--config", str(shifted))
    assert shifted_result.returncode == 0, shifted_result.stderr
    assert "segment recent: 1 user" in shifted_result.stdout
    assert "old-buyer" in shifted_result.stdout
