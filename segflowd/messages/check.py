"""`segflowd check` for templates: compile each one and render it for a sample user.

The sample user has an id, an email and a name, and returns a placeholder
for every other attribute, since the attributes real users have are not
known before they arrive. So the check finds syntax errors, unknown filters
and tests, sandbox violations, misspelled built-in variables (`usr`,
`unsubscribe_ur`), misspelled keys of the `event` variable, and variables
that a transaction's template uses but a transaction never passes. It does
not find a misspelled user attribute (`user.nmae`).
"""

from __future__ import annotations

import difflib
import math
from datetime import datetime, timezone
from typing import Any, Iterator

import jinja2
from jinja2 import meta, nodes

from segflowd.config import Config
from segflowd.messages.compose import ComposedMessage, InvalidAddress, parse_address, parse_sender
from segflowd.messages.queue import transaction_message_key
from segflowd.messages.templates import TemplateError, Templates
from segflowd.messages.unsubscribe import unsubscribe_url
from segflowd.timestamps import format_timestamp

BUILT_INS = ("user", "event", "campaign", "unsubscribe_url")
SAMPLE_USER_ID = "sample-user"
SAMPLE_EMAIL = "sample.user@example.test"
SAMPLE_NAME = "Sample User"
# The largest events.id (BIGINT UNSIGNED), for the longest transaction key.
_MAX_EVENT_ID = 2**64 - 1


class SampleValue(str):
    """A placeholder for a value not known before real data arrives.

    It is a string such as `<user.plan>` that also passes as a number,
    a sequence and an object with any attribute, so a template that uses
    a user attribute in any of those ways renders.
    """

    def _child(self, suffix: str) -> "SampleValue":
        # `<user.plan>` with suffix `.tier` is `<user.plan.tier>`.
        return SampleValue(str.__getitem__(self, slice(None, -1)) + suffix + ">")

    def __getattr__(self, name: str) -> "SampleValue":
        if name.startswith("_"):
            raise AttributeError(name)
        return self._child(f".{name}")

    def __getitem__(self, key: Any) -> "SampleValue":  # type: ignore[override]
        return self._child(f"[{key!r}]")

    def __call__(self, *args: Any, **kwargs: Any) -> "SampleValue":
        return self

    def __iter__(self) -> Iterator["SampleValue"]:  # type: ignore[override]
        return iter([self._child("[0]")])

    def __float__(self) -> float:
        return 1.0

    def __int__(self) -> int:
        return 1

    def __round__(self, digits: int | None = None) -> float:
        return 1.0

    def _number(self, other: Any) -> "SampleValue":
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _number  # type: ignore[assignment]
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = _number  # type: ignore[assignment]

    def __neg__(self) -> "SampleValue":
        return self

    def __abs__(self) -> "SampleValue":
        return self

    def _compare(self, other: Any) -> bool:
        return isinstance(other, (str, int, float)) and not (isinstance(other, float) and math.isnan(other))

    __lt__ = __le__ = __gt__ = __ge__ = _compare  # type: ignore[assignment]
    __hash__ = str.__hash__


class SampleAttributes(dict):  # type: ignore[type-arg]
    """Known sample attributes, and a SampleValue for any other key."""

    def __init__(self, prefix: str, known: dict[str, Any]) -> None:
        super().__init__(known)
        self.prefix = prefix

    def __missing__(self, key: str) -> SampleValue:
        return SampleValue(f"<{self.prefix}.{key}>")


def sample_user() -> SampleAttributes:
    return SampleAttributes("user", {"id": SAMPLE_USER_ID, "email": SAMPLE_EMAIL, "name": SAMPLE_NAME})


def sample_event(name: str) -> dict[str, Any]:
    return {
        "id": 1,
        "name": name,
        "attributes": SampleAttributes("event.attributes", {}),
        "timestamp": format_timestamp(datetime.now(timezone.utc).replace(tzinfo=None)),
    }


def _referenced_sources(environment: jinja2.Environment, name: str, seen: set[str]) -> Iterator[tuple[str, str | None, nodes.Template]]:
    """Yield the parsed template and every template it extends or includes by a constant name."""
    if name in seen:
        return
    seen.add(name)
    source, filename, _ = environment.loader.get_source(environment, name)  # type: ignore[union-attr]
    tree = environment.parse(source, name, filename)
    yield name, filename, tree
    for referenced in meta.find_referenced_templates(tree):
        if referenced is not None:
            try:
                yield from _referenced_sources(environment, referenced, seen)
            except jinja2.TemplateNotFound:
                continue


def free_variables(templates: Templates, name: str) -> dict[str, tuple[str | None, int, str]]:
    """Top-level variables a template reads without defining them, with the part, file and line of first use."""
    found: dict[str, tuple[str | None, int, str]] = {}
    for part in templates.parts(name):
        environment = templates.environment(part)
        for _, filename, tree in _referenced_sources(environment, templates.source_name(name, part), set()):
            names = meta.find_undeclared_variables(tree) - set(environment.globals)
            for node in tree.find_all(nodes.Name):
                if node.ctx == "load" and node.name in names and node.name not in found:
                    found[node.name] = (filename, node.lineno, part)
    return found


def _sample_message(config: Config, templates: Templates, name: str, context: dict[str, Any], campaign: bool) -> None:
    """Render a template and build its MIME form; raise TemplateError or InvalidAddress."""
    rendered = templates.render(name, context)
    sender = parse_sender(config.email.from_address)
    url = context["unsubscribe_url"]
    ComposedMessage(
        sender=sender,
        recipient=parse_address(SAMPLE_EMAIL, display_name=SAMPLE_NAME),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        date=datetime.now(timezone.utc).replace(tzinfo=None),
        message_id=f"<check@{sender.ascii_domain}>",
        list_unsubscribe=url if campaign else None,
    ).as_bytes()


def check_templates(config: Config) -> list[str]:
    """Compile and sample-render every template; return an error per broken one."""
    errors: list[str] = []
    try:
        parse_sender(config.email.from_address)
    except InvalidAddress as exc:
        return [f"{config.path}: email.from: {exc}"]

    # Message keys and template names are stored in VARCHAR(255) columns.
    for name in sorted(config.transactions):
        if len(transaction_message_key(name, _MAX_EVENT_ID)) > 255:
            errors.append(f"{config.path}: transactions.{name[:40]}...: the name is too long for message keys; "
                          f"use at most {255 - len(transaction_message_key('', _MAX_EVENT_ID))} characters")
    for name in sorted(config.templates):
        if len(name) > 255:
            errors.append(f"{config.path}: templates.{name[:40]}...: template names have at most 255 characters")

    templates = Templates(config)
    used_by: dict[str, list[tuple[str, str]]] = {}
    for transaction in config.transactions.values():
        used_by.setdefault(transaction.template, []).append((transaction.name, transaction.event))
    url = unsubscribe_url(config, SAMPLE_USER_ID)

    for name in sorted(config.templates):
        try:
            templates.compile(name)
            free = free_variables(templates, name)
        except TemplateError as exc:
            errors.append(str(exc))
            continue
        except jinja2.TemplateSyntaxError as exc:  # in an extended or included file
            errors.append(str(TemplateError(name, templates.location(name, "html", exc.filename, exc.lineno), exc.message or str(exc))))
            continue

        keywords = {}
        problems = []
        for variable, (filename, lineno, part) in sorted(free.items()):
            if variable in BUILT_INS:
                continue
            where = templates.location(name, part, filename, lineno)
            close = difflib.get_close_matches(variable, BUILT_INS, n=1, cutoff=0.75)
            if close:
                problems.append(str(TemplateError(name, where, f"{variable!r} is undefined; did you mean {close[0]!r}?")))
            elif name in used_by:
                transactions = ", ".join(t for t, _ in used_by[name])
                problems.append(str(TemplateError(
                    name, where,
                    f"{variable!r} is undefined: transactions ({transactions}) pass no send_email keywords; "
                    "use user, event, campaign or unsubscribe_url",
                )))
            keywords[variable] = SampleValue(f"<{variable}>")
        if problems:
            errors.extend(problems)
            continue

        contexts = []
        for _, event_name in used_by.get(name, []):
            context = {"user": sample_user(), "event": sample_event(event_name), "campaign": None, "unsubscribe_url": url}
            contexts.append((context, False, f"rendered for a sample user and a sample {event_name!r} event"))
        if name not in used_by:
            context = {**keywords, "user": sample_user(), "event": None, "campaign": "sample-campaign",
                       "unsubscribe_url": url}
            contexts.append((context, True, "rendered for a sample user as campaign mail, where event is None"))
        for context, campaign, description in contexts:
            try:
                _sample_message(config, templates, name, context, campaign)
            except TemplateError as exc:
                errors.append(f"{exc} ({description})")
                break
            except InvalidAddress as exc:
                errors.append(f"template {name!r}: {exc}")
                break
    return errors
