"""`segflowd render TEMPLATE --user ID`: print the message a user would get."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from segflowd.config import Config
from segflowd.db import Database, load_json
from segflowd.messages.check import BUILT_INS, SampleValue, free_variables
from segflowd.messages.compose import InvalidAddress, Mailbox, one_line, parse_address, parse_sender
from segflowd.messages.queue import event_context, message_context
from segflowd.messages.templates import TemplateError, Templates, template_context
from segflowd.messages.unsubscribe import unsubscribe_url
from segflowd.model import Event
from segflowd.queries import QUERIES
from segflowd.users import get_user


def _format_mailbox(mailbox: Mailbox | None) -> str:
    if mailbox is None:
        return "(no valid email attribute)"
    return f"{mailbox.display_name} <{mailbox.address}>" if mailbox.display_name else mailbox.address


async def _latest_event(db: Database, user_id: str, name: str) -> Event | None:
    row = await db.fetch_one(QUERIES.get_latest_event, (user_id, name))
    if row is None:
        return None
    return Event(row["id"], row["user_id"], row["name"], load_json(row["attributes"]), row["created_at"])


async def print_rendered(
    config: Config, db: Database, template: str, user_id: str, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Render `template` for one stored user and print subject, headers and both parts; return the exit code.

    A template that a transaction uses is rendered as that transaction's
    message for the user's latest event of its name. Any other template is
    rendered as campaign mail, with the List-Unsubscribe headers, and
    send_email keywords it uses are shown as placeholders.
    """
    if template not in config.templates:
        defined = ", ".join(sorted(config.templates)) or "none"
        print(f"segflowd render: unknown template {template!r}; defined templates: {defined}", file=err)
        return 1
    async with db.transaction() as cur:
        user = await get_user(cur, user_id)
    if user is None:
        print(f"segflowd render: no user with id {user_id!r}", file=err)
        return 1

    templates = Templates(config)
    transaction = next((t for t in sorted(config.transactions.values(), key=lambda t: t.name)
                        if t.template == template), None)
    keywords: dict[str, Any] = {}
    if transaction is not None:
        event = await _latest_event(db, user_id, transaction.event)
        if event is None:
            print(
                f"segflowd render: template {template!r} is sent by transaction {transaction.name!r} for "
                f"{transaction.event!r} events, and user {user_id!r} has none; record one with "
                f"POST /api/user/{{id}}/event/{transaction.event}",
                file=err,
            )
            return 1
        stored = message_context(user, event=event_context(event))
        campaign = False
    else:
        try:
            free = free_variables(templates, template)
        except TemplateError as exc:
            print(f"segflowd render: {exc}", file=err)
            return 1
        keywords = {name: SampleValue(f"<{name}>") for name in sorted(free) if name not in BUILT_INS}
        stored = message_context(user, params=keywords)
        campaign = True

    url = unsubscribe_url(config, user_id)
    try:
        rendered = templates.render(template, template_context(stored, unsubscribe_url=url))
    except (TemplateError, ValueError) as exc:
        print(f"segflowd render: {exc}", file=err)
        return 1

    sender = parse_sender(config.email.from_address)
    recipient: Mailbox | None
    try:
        recipient = parse_address(user.get("email"), display_name=user.get("name"), field_name=f"user {user_id!r}'s email attribute")
    except InvalidAddress as exc:
        print(f"warning: {exc}; delivery of this message would fail", file=err)
        recipient = None
    kind = f"transactional (transaction {transaction.name})" if transaction is not None else "campaign"
    print(f"Subject: {one_line(rendered.subject)}", file=out)
    print(f"From: {_format_mailbox(sender)}", file=out)
    print(f"To: {_format_mailbox(recipient)}", file=out)
    print(f"Kind: {kind}", file=out)
    if campaign:
        print(f"List-Unsubscribe: <{url}>", file=out)
        print("List-Unsubscribe-Post: List-Unsubscribe=One-Click", file=out)
    if keywords:
        print(f"Note: send_email keywords shown as placeholders: {', '.join(keywords)}", file=out)
    print("", file=out)
    print("----- text/plain -----", file=out)
    print(rendered.text.rstrip("\n"), file=out)
    print("----- text/html -----", file=out)
    print(rendered.html.rstrip("\n"), file=out)
    return 0
