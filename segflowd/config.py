"""Load and validate `segflow.yaml`.

Every problem is collected, not only the first, and each one names the file
and the key path (`campaigns.onboarding.flow`) and says what was expected.
Unknown keys are errors so that a typo is never silently ignored.
`${VAR}` and `${VAR:-default}` in string values are read from the
environment. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import yaml

from segflowd.clock import to_naive_utc
from segflowd.timestamps import parse_timestamp


class ConfigError(Exception):
    """A config that cannot be used; `errors` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass(frozen=True)
class DatabaseUrl:
    host: str
    port: int
    user: str
    password: str
    database: str
    raw: str

    def redacted(self) -> str:
        """Return the URL without its password, for messages and logs."""
        auth = self.user + (":***" if self.password else "")
        return f"mysql://{auth}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class DatabaseConfig:
    url: DatabaseUrl
    pool_size: int = 16


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    public_url: str
    api_keys: tuple[str, ...]
    secret: str
    max_body_bytes: int = 1024 * 1024
    max_batch_items: int = 1000


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 1025
    tls: str = "none"
    username: str | None = None
    password: str | None = None
    timeout_seconds: float = 30.0
    pool_size: int = 4


@dataclass(frozen=True)
class SesConfig:
    region: str = "us-east-1"
    endpoint_url: str | None = None


@dataclass(frozen=True)
class EmailConfig:
    from_address: str
    provider: str = "outbox"
    outbox_dir: Path = Path("outbox")
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    ses: SesConfig = field(default_factory=SesConfig)
    max_per_second: float = 20.0
    max_attempts: int = 20
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    workers: int = 4


@dataclass(frozen=True)
class SegmentConfig:
    name: str
    sql: str
    file: Path | None
    refresh: timedelta


@dataclass(frozen=True)
class TemplateConfig:
    name: str
    subject: str
    html: Path
    text: Path | None


@dataclass(frozen=True)
class CampaignConfig:
    name: str
    segments: tuple[str, ...]
    exclude: tuple[str, ...]
    behavior: str
    flow: str


@dataclass(frozen=True)
class TransactionConfig:
    name: str
    event: str
    template: str


@dataclass(frozen=True)
class SchedulerConfig:
    poll_interval: timedelta = timedelta(milliseconds=200)
    lease: timedelta = timedelta(seconds=60)
    batch_size: int = 100
    workers: int = 4


@dataclass(frozen=True)
class ClockConfig:
    start: datetime | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    path: Path
    root: Path
    database: DatabaseConfig
    http: HttpConfig
    email: EmailConfig
    segments: dict[str, SegmentConfig]
    templates: dict[str, TemplateConfig]
    campaigns: dict[str, CampaignConfig]
    transactions: dict[str, TransactionConfig]
    scheduler: SchedulerConfig
    logging: LoggingConfig
    clock: ClockConfig = field(default_factory=ClockConfig)


# --- environment interpolation ----------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _interpolate(value: Any, path: str, errors: list[str], where: str) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a YAML tree."""
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(path, k), errors, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", errors, where) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        errors.append(
            f"{where}: {path}: environment variable {name} is not set; "
            f"set it or write ${{{name}:-default}}"
        )
        return ""

    result = _VAR.sub(replace, value)
    # A value that was one whole ${...} takes the YAML type of what it became,
    # so that `port: ${SMTP_PORT:-1025}` is an integer.
    if _VAR.fullmatch(value):
        try:
            typed = yaml.safe_load(result) if result else None
        except yaml.YAMLError:
            return result
        if isinstance(typed, (int, float, bool)) or typed is None:
            return typed
    return result


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- a small checker that collects errors with key paths ---------------------


class _Section:
    """Reads keys of one mapping, recording errors instead of raising."""

    def __init__(self, data: Any, path: str, errors: list[str], where: str) -> None:
        self.path, self.errors, self.where = path, errors, where
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error(path, f"expected a mapping, got {_describe(data)}")
            data = {}
        self.data: dict[str, Any] = data

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{self.where}: {path or '(top level)'}: {message}")

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., *, expected: str) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                self.error(self.key(name), f"missing; expected {expected}")
                return None
            return default
        value = self.data[name]
        if value is None and default is not ... and default is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.error(self.key(name), f"expected {expected}, got {_describe(value)}")
            return None if default is ... else default
        if not isinstance(value, kind):
            self.error(self.key(name), f"expected {expected}, got {_describe(value)}")
            return None if default is ... else default
        return value

    def section(self, name: str, required: bool = False) -> "_Section":
        self.seen.add(name)
        if required and name not in self.data:
            self.error(self.key(name), "missing; expected a mapping")
        return _Section(self.data.get(name), self.key(name), self.errors, self.where)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                known = ", ".join(sorted(self.seen)) or "none"
                self.error(self.key(str(name)), f"unknown key; known keys here: {known}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta | None:
    """Parse `500ms`, `30s`, `5m`, `2h`, `1d`, `1w`, or a number of seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return timedelta(seconds=value) if value > 0 else None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            return timedelta(seconds=seconds) if seconds > 0 else None
    return None


def _duration(section: _Section, name: str, default: timedelta) -> timedelta:
    section.seen.add(name)
    if name not in section.data:
        return default
    parsed = parse_duration(section.data[name])
    if parsed is None:
        section.error(
            section.key(name),
            f"expected a positive duration such as 30s, 5m, 2h or 1d, got {_describe(section.data[name])}",
        )
        return default
    return parsed


def _positive(section: _Section, name: str, default: Any, kind: type = int) -> Any:
    value = section.get(name, kind, default, expected=f"a positive {'integer' if kind is int else 'number'}")
    if value is not None and value <= 0:
        section.error(section.key(name), f"expected a positive number, got {value!r}")
        return default
    return value


def _choice(section: _Section, name: str, choices: tuple[str, ...], default: Any = ...) -> Any:
    value = section.get(name, str, default, expected=" or ".join(choices))
    if value is not None and value not in choices:
        section.error(section.key(name), f"expected one of {', '.join(choices)}, got {value!r}")
        return choices[0] if default is ... else default
    return value


def _name_list(section: _Section, name: str) -> tuple[str, ...]:
    value = section.get(name, list, [], expected="a list of segment names")
    if value is None:
        return ()
    names = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            section.error(f"{section.key(name)}[{i}]", f"expected a segment name, got {_describe(item)}")
        else:
            names.append(item)
    return tuple(names)


def _path(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def parse_database_url(raw: str) -> DatabaseUrl:
    """Parse `mysql://user:password@host:port/database`; raise ValueError with the fix."""
    parts = urlsplit(raw)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"expected a URL like mysql://user:password@host:3306/segflow, got {raw!r}")
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        raise ValueError(f"expected the database name after the host, as in mysql://root@127.0.0.1:3306/segflow, got {raw!r}")
    if not re.fullmatch(r"[A-Za-z0-9_$]+", database):
        raise ValueError(f"database name {database!r} may contain only letters, digits, _ and $")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError(f"the port in {raw!r} is not a number") from None
    return DatabaseUrl(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        raw=raw,
    )


_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_FLOW = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


# --- sections ------------------------------------------------------------------


def _database(top: _Section) -> DatabaseConfig | None:
    s = top.section("database", required=True)
    raw = s.get("url", str, expected="a URL like mysql://root@127.0.0.1:3306/segflow")
    pool_size = _positive(s, "pool_size", 16)
    s.finish()
    if raw is None:
        return None
    try:
        url = parse_database_url(raw)
    except ValueError as exc:
        s.error(s.key("url"), str(exc))
        return None
    return DatabaseConfig(url=url, pool_size=pool_size)


def _http(top: _Section) -> HttpConfig | None:
    s = top.section("http", required=True)
    listen = s.get("listen", str, "127.0.0.1:8080", expected="host:port, such as 127.0.0.1:8080")
    public_url = s.get("public_url", str, None, expected="a URL such as https://mail.example.com")
    keys = s.get("api_keys", list, expected="a list of API key strings")
    secret = s.get("secret", str, expected="a long random string that signs unsubscribe links")
    max_body = _positive(s, "max_body_bytes", 1024 * 1024)
    max_batch = _positive(s, "max_batch_items", 1000)
    s.finish()

    host, port = "127.0.0.1", 8080
    if listen is not None:
        match = _LISTEN.match(listen)
        if not match or not 0 <= int(match.group(2)) < 65536:
            s.error(s.key("listen"), f"expected host:port such as 127.0.0.1:8080, got {listen!r}")
        else:
            host, port = match.group(1).strip("[]"), int(match.group(2))
    if public_url is None:
        public_url = f"http://{listen or '127.0.0.1:8080'}"
    elif not public_url.startswith(("http://", "https://")):
        s.error(s.key("public_url"), f"expected an http:// or https:// URL, got {public_url!r}")
    api_keys: list[str] = []
    for i, key in enumerate(keys or []):
        if not isinstance(key, str) or not key:
            s.error(f"{s.key('api_keys')}[{i}]", "expected a non-empty string")
        else:
            api_keys.append(key)
    if keys is not None and not api_keys:
        s.error(s.key("api_keys"), "expected at least one API key")
    if secret is not None and len(secret) < 8:
        s.error(s.key("secret"), "expected at least 8 characters; use a long random string")
    if keys is None or secret is None:
        return None
    return HttpConfig(host, port, public_url.rstrip("/"), tuple(api_keys), secret, max_body, max_batch)


def _email(top: _Section, root: Path) -> EmailConfig | None:
    s = top.section("email", required=True)
    from_address = s.get("from", str, expected='a sender such as "Acme <hello@acme.test>"')
    provider = _choice(s, "provider", ("outbox", "smtp", "ses"), "outbox")
    outbox_dir = s.get("outbox_dir", str, "outbox", expected="a folder path")
    max_per_second = _positive(s, "max_per_second", 20.0, float)
    max_attempts = _positive(s, "max_attempts", 20)
    retry_base = _positive(s, "retry_base_seconds", 2.0, float)
    retry_max = _positive(s, "retry_max_seconds", 600.0, float)
    workers = _positive(s, "workers", 4)

    smtp_s = s.section("smtp")
    smtp = SmtpConfig(
        host=smtp_s.get("host", str, "127.0.0.1", expected="a host name"),
        port=_positive(smtp_s, "port", 1025),
        tls=_choice(smtp_s, "tls", ("none", "starttls", "tls"), "none"),
        username=smtp_s.get("username", str, None, expected="a user name or null"),
        password=smtp_s.get("password", str, None, expected="a password or null"),
        timeout_seconds=_positive(smtp_s, "timeout_seconds", 30.0, float),
        pool_size=_positive(smtp_s, "pool_size", 4),
    )
    smtp_s.finish()

    ses_s = s.section("ses")
    ses = SesConfig(
        region=ses_s.get("region", str, "us-east-1", expected="an AWS region such as us-east-1"),
        endpoint_url=ses_s.get("endpoint_url", str, None, expected="a URL or null"),
    )
    ses_s.finish()
    s.finish()

    if from_address is not None and "@" not in from_address:
        s.error(s.key("from"), f'expected an address such as "Acme <hello@acme.test>", got {from_address!r}')
    if from_address is None:
        return None
    return EmailConfig(
        from_address=from_address,
        provider=provider,
        outbox_dir=_path(root, outbox_dir),
        smtp=smtp,
        ses=ses,
        max_per_second=max_per_second,
        max_attempts=max_attempts,
        retry_base_seconds=retry_base,
        retry_max_seconds=retry_max,
        workers=workers,
    )


def _segments(top: _Section, root: Path) -> dict[str, SegmentConfig]:
    s = top.section("segments")
    segments: dict[str, SegmentConfig] = {}
    for name in s.data:
        s.seen.add(name)
        item = _Section(s.data[name], s.key(name), s.errors, s.where)
        if not _NAME.match(str(name)):
            s.error(s.key(name), "segment names use letters, digits, '-', '_' and '.'")
        sql = item.get("sql", str, None, expected="a SELECT statement")
        file = item.get("file", str, None, expected="a path to a .sql file")
        refresh = _duration(item, "refresh", timedelta(minutes=1))
        item.finish()
        path = None
        if (sql is None) == (file is None):
            item.error(item.path, "expected exactly one of 'sql' or 'file'")
            continue
        if file is not None:
            path = _path(root, file)
            try:
                sql = path.read_text(encoding="utf-8")
            except OSError as exc:
                item.error(item.key("file"), f"cannot read {path}: {exc.strerror}")
                continue
        segments[str(name)] = SegmentConfig(str(name), sql, path, refresh)
    return segments


def _templates(top: _Section, root: Path) -> dict[str, TemplateConfig]:
    s = top.section("templates")
    templates: dict[str, TemplateConfig] = {}
    for name in s.data:
        s.seen.add(name)
        item = _Section(s.data[name], s.key(name), s.errors, s.where)
        subject = item.get("subject", str, expected="a one-line Jinja2 subject")
        html = item.get("html", str, expected="a path to an HTML Jinja2 template")
        text = item.get("text", str, None, expected="a path to a text Jinja2 template, or nothing")
        item.finish()
        paths = {}
        for key, value in (("html", html), ("text", text)):
            if value is None:
                continue
            path = _path(root, value)
            if not path.is_file():
                item.error(item.key(key), f"file {path} does not exist")
            paths[key] = path
        if subject is not None and ("\n" in subject.strip() or "\r" in subject):
            item.error(item.key("subject"), "expected one line; a subject cannot contain line breaks")
        if subject is None or html is None:
            continue
        templates[str(name)] = TemplateConfig(str(name), subject.strip(), paths["html"], paths.get("text"))
    return templates


def _campaigns(top: _Section) -> dict[str, CampaignConfig]:
    s = top.section("campaigns")
    campaigns: dict[str, CampaignConfig] = {}
    for name in s.data:
        s.seen.add(name)
        item = _Section(s.data[name], s.key(name), s.errors, s.where)
        if not _NAME.match(str(name)):
            s.error(s.key(name), "campaign names use letters, digits, '-', '_' and '.'")
        segments = _name_list(item, "segments")
        exclude = _name_list(item, "exclude")
        behavior = _choice(item, "behavior", ("static", "dynamic"), "static")
        flow = item.get("flow", str, expected="module:function, such as flows.onboarding:onboarding")
        item.finish()
        if not segments and "segments" not in item.data:
            item.error(item.key("segments"), "missing; expected a list of at least one segment name")
        elif not segments:
            item.error(item.key("segments"), "expected at least one segment name")
        if flow is not None and not _FLOW.match(flow):
            item.error(item.key("flow"), f"expected module:function, such as flows.onboarding:onboarding, got {flow!r}")
            continue
        if flow is None:
            continue
        campaigns[str(name)] = CampaignConfig(str(name), segments, exclude, behavior, flow)
    return campaigns


def _transactions(top: _Section) -> dict[str, TransactionConfig]:
    s = top.section("transactions")
    transactions: dict[str, TransactionConfig] = {}
    for name in s.data:
        s.seen.add(name)
        item = _Section(s.data[name], s.key(name), s.errors, s.where)
        event = item.get("event", str, expected="the event name that triggers this message")
        template = item.get("template", str, expected="a template name from `templates`")
        item.finish()
        if event is not None and template is not None:
            transactions[str(name)] = TransactionConfig(str(name), event, template)
    return transactions


def _scheduler(top: _Section) -> SchedulerConfig:
    s = top.section("scheduler")
    config = SchedulerConfig(
        poll_interval=_duration(s, "poll_interval", timedelta(milliseconds=200)),
        lease=_duration(s, "lease", timedelta(seconds=60)),
        batch_size=_positive(s, "batch_size", 100),
        workers=_positive(s, "workers", 4),
    )
    s.finish()
    return config


def _logging(top: _Section) -> LoggingConfig:
    s = top.section("logging")
    config = LoggingConfig(
        level=_choice(s, "level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        format=_choice(s, "format", ("text", "json"), "text"),
    )
    s.finish()
    return config


def _clock(top: _Section) -> ClockConfig:
    s = top.section("clock")
    raw = s.get("start", (str, datetime), None, expected="an ISO-8601 time such as 1998-07-01T00:00:00Z, or null")
    s.finish()
    if raw is None:
        return ClockConfig()
    if isinstance(raw, datetime):
        return ClockConfig(to_naive_utc(raw))
    try:
        return ClockConfig(parse_timestamp(raw))
    except ValueError as exc:
        s.error(s.key("start"), str(exc))
        return ClockConfig()


def _cross_references(config_parts: dict[str, Any], errors: list[str], where: str) -> None:
    segments = config_parts["segments"]
    for campaign in config_parts["campaigns"].values():
        for key in ("segments", "exclude"):
            for i, name in enumerate(getattr(campaign, key)):
                if name not in segments:
                    errors.append(
                        f"{where}: campaigns.{campaign.name}.{key}[{i}]: segment {name!r} is not defined; "
                        f"defined segments: {', '.join(sorted(segments)) or 'none'}"
                    )
    templates = config_parts["templates"]
    for transaction in config_parts["transactions"].values():
        if transaction.template not in templates:
            errors.append(
                f"{where}: transactions.{transaction.name}.template: template {transaction.template!r} "
                f"is not defined; defined templates: {', '.join(sorted(templates)) or 'none'}"
            )


# --- entry point ---------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, extend_sys_path: bool = True) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError with every problem."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read the config file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML{at}: {problem}"]) from None

    errors: list[str] = []
    data = _interpolate(data, "", errors, where)
    root = path.resolve().parent
    top = _Section(data, "", errors, where)
    builders: dict[str, Callable[[], Any]] = {
        "database": lambda: _database(top),
        "http": lambda: _http(top),
        "email": lambda: _email(top, root),
        "segments": lambda: _segments(top, root),
        "templates": lambda: _templates(top, root),
        "campaigns": lambda: _campaigns(top),
        "transactions": lambda: _transactions(top),
        "scheduler": lambda: _scheduler(top),
        "logging": lambda: _logging(top),
        "clock": lambda: _clock(top),
    }
    parts = {name: build() for name, build in builders.items()}
    top.finish()
    _cross_references(parts, errors, where)
    if errors:
        raise ConfigError(errors)

    if extend_sys_path and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return Config(path=path.resolve(), root=root, **parts)
