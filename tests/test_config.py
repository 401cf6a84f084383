"""Config loading: every error names the file and key path; env and paths resolve."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest

from segflowd.config import ConfigError, load_config, parse_database_url, parse_duration

BASE = """
database:
  url: mysql://root@127.0.0.1:3306/segflow_config_test
http:
  listen: 127.0.0.1:8080
  api_keys: ["k1"]
  secret: a-long-secret
email:
  from: "Acme <hello@acme.test>"
"""


def errors_of(write_config, raw: str, files: dict[str, str] | None = None) -> list[str]:
    path = write_config(raw=raw, files=files)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def test_minimal_config_has_defaults(write_config):
    config = load_config(write_config(raw=BASE))
    assert config.http.api_keys == ("k1",)
    assert config.http.public_url == "http://127.0.0.1:8080"
    assert config.http.max_body_bytes == 1024 * 1024
    assert config.email.provider == "outbox"
    assert config.email.outbox_dir == config.root / "outbox"
    assert config.scheduler.lease == timedelta(seconds=60)
    assert config.segments == {}


def test_example_config_loads():
    config = load_config("segflow.yaml")
    assert "big-spenders" in config.segments
    assert config.campaigns["winback"].behavior == "dynamic"
    assert config.transactions["purchase-receipt"].template == "purchase-receipt"


def test_unknown_key_names_path_and_known_keys(write_config):
    errors = errors_of(write_config, BASE + "  provdier: smtp\n")
    assert len(errors) == 1
    assert "segflow.yaml: email.provdier: unknown key" in errors[0]
    assert "provider" in errors[0]


def test_unknown_top_level_key(write_config):
    errors = errors_of(write_config, BASE + "segmnets: {}\n")
    assert any("segmnets: unknown key" in e for e in errors)


def test_missing_section_and_key(write_config):
    errors = errors_of(write_config, "database:\n  url: mysql://root@h/db\nemail:\n  from: a@b.test\n")
    assert any("http: missing" in e for e in errors)


def test_wrong_types_name_each_key(write_config):
    raw = BASE.replace('api_keys: ["k1"]', "api_keys: k1") + "  max_per_second: fast\n"
    errors = errors_of(write_config, raw)
    assert any("http.api_keys: expected a list" in e for e in errors)
    assert any("email.max_per_second: expected a positive number, got str 'fast'" in e for e in errors)


def test_every_error_is_listed(write_config):
    raw = BASE + """
campaigns:
  onboarding:
    segments: [nobody]
    behavior: sometimes
    flow: not-a-flow
"""
    errors = errors_of(write_config, raw)
    joined = "\n".join(errors)
    assert "campaigns.onboarding.behavior: expected one of static, dynamic" in joined
    assert "campaigns.onboarding.flow: expected module:function" in joined
    assert len(errors) >= 2


def test_campaign_unknown_segment(write_config):
    raw = BASE + """
segments:
  everyone: {sql: "SELECT id FROM users"}
campaigns:
  onboarding:
    segments: [everyone, evryone]
    flow: flows.onboarding:onboarding
"""
    errors = errors_of(write_config, raw)
    assert errors == [
        f"{write_config(raw=raw)}: campaigns.onboarding.segments[1]: segment 'evryone' is not defined; "
        "defined segments: everyone"
    ]


def test_transaction_unknown_template(write_config):
    raw = BASE + """
transactions:
  receipt: {event: purchase, template: recipt}
"""
    errors = errors_of(write_config, raw)
    assert any("transactions.receipt.template: template 'recipt' is not defined" in e for e in errors)


def test_env_variables_and_defaults(write_config, monkeypatch):
    monkeypatch.setenv("TEST_SEGFLOW_KEY", "from-env")
    monkeypatch.setenv("TEST_SEGFLOW_PORT", "2525")
    raw = BASE.replace('["k1"]', '["${TEST_SEGFLOW_KEY}", "${TEST_SEGFLOW_OTHER:-fallback}"]') + (
        "  smtp: {port: \"${TEST_SEGFLOW_PORT}\"}\n"
    )
    config = load_config(write_config(raw=raw))
    assert config.http.api_keys == ("from-env", "fallback")
    assert config.email.smtp.port == 2525


def test_env_variable_missing_is_an_error(write_config, monkeypatch):
    monkeypatch.delenv("TEST_SEGFLOW_UNSET", raising=False)
    errors = errors_of(write_config, BASE.replace("a-long-secret", "${TEST_SEGFLOW_UNSET}"))
    assert any("http.secret: environment variable TEST_SEGFLOW_UNSET is not set" in e for e in errors)


def test_relative_paths_from_config_folder(write_config, tmp_path):
    raw = BASE + """
segments:
  inactive: {file: sql/inactive.sql, refresh: 5m}
templates:
  welcome: {subject: "Hi {{ user.name }}", html: t/welcome.html}
"""
    config = load_config(write_config(raw=raw, files={"sql/inactive.sql": "SELECT id FROM users", "t/welcome.html": "<p>hi</p>"}))
    assert config.segments["inactive"].sql == "SELECT id FROM users"
    assert config.segments["inactive"].refresh == timedelta(minutes=5)
    assert config.templates["welcome"].html == tmp_path / "t/welcome.html"
    assert str(tmp_path) in sys.path


def test_missing_files_are_errors(write_config):
    raw = BASE + """
segments:
  inactive: {file: missing.sql}
templates:
  welcome: {subject: "Hi", html: missing.html}
"""
    errors = errors_of(write_config, raw)
    assert any("segments.inactive.file: cannot read" in e for e in errors)
    assert any("templates.welcome.html: file" in e and "does not exist" in e for e in errors)


def test_segment_needs_sql_or_file(write_config):
    errors = errors_of(write_config, BASE + "segments:\n  both: {sql: 'SELECT id FROM users', file: x.sql}\n")
    assert any("segments.both: expected exactly one of 'sql' or 'file'" in e for e in errors)


def test_bad_refresh_duration(write_config):
    errors = errors_of(write_config, BASE + "segments:\n  s: {sql: 'SELECT id FROM users', refresh: soon}\n")
    assert any("segments.s.refresh: expected a positive duration" in e for e in errors)


def test_bad_database_url(write_config):
    errors = errors_of(write_config, BASE.replace("mysql://root@127.0.0.1:3306/segflow_config_test", "postgres://x/y"))
    assert any("database.url: expected a URL like mysql://" in e for e in errors)


def test_invalid_yaml_names_line(write_config):
    errors = errors_of(write_config, "database: [\n")
    assert len(errors) == 1
    assert "invalid YAML at line" in errors[0]


def test_multiline_subject_rejected(write_config):
    raw = BASE + 'templates:\n  t: {subject: "a\\nBcc: x@y", html: t.html}\n'
    errors = errors_of(write_config, raw, files={"t.html": "x"})
    assert any("templates.t.subject: expected one line" in e for e in errors)


def test_parse_database_url():
    url = parse_database_url("mysql://app:p%40ss@db.internal:3307/shop")
    assert (url.user, url.password, url.host, url.port, url.database) == ("app", "p@ss", "db.internal", 3307, "shop")
    assert "p@ss" not in url.redacted()


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1w", 604800), (90, 90)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0s", "-5m", "5 minutes", "", True])
def test_parse_duration_rejects(text):
    assert parse_duration(text) is None


def test_clock_start_parses_offset(write_config):
    from datetime import datetime

    config = load_config(write_config(raw=BASE + "clock: {start: '1998-07-01T02:00:00+02:00'}\n"))
    assert config.clock.start == datetime(1998, 7, 1, 0, 0)


def test_clock_start_invalid(write_config):
    errors = errors_of(write_config, BASE + "clock: {start: 'next tuesday'}\n")
    assert any("clock.start: expected an ISO-8601 timestamp" in e for e in errors)


def test_shifted_clock_runs_from_start():
    from datetime import datetime

    from segflowd.clock import ShiftedClock

    clock = ShiftedClock(datetime(1998, 7, 1))
    first = clock.now()
    assert datetime(1998, 7, 1) <= first < datetime(1998, 7, 1, 0, 1)
    assert clock.now() >= first
