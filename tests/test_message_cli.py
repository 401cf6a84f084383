"""`segflowd render`: the message a user would get, printed."""

from __future__ import annotations

import io

from segflowd.messages.cli import print_rendered
from test_message_support import add_event, add_user, clock, make_config  # noqa: F401 - fixtures


async def render(config, db, template, user_id):
    out, err = io.StringIO(), io.StringIO()
    code = await print_rendered(config, db, template, user_id, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def test_render_campaign_template(db, clock, make_config):
    config = make_config()
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana <3")

    code, out, err = await render(config, db, "welcome", "u1")

    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "Subject: Welcome, Ana <3!"
    assert lines[1] == "From: Acme <hello@acme.test>"
    assert lines[2] == "To: Ana <3 <ana@example.test>"
    assert lines[3] == "Kind: campaign"
    assert lines[4].startswith("List-Unsubscribe: <http://127.0.0.1:8080/unsubscribe/")
    assert lines[5] == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert "----- text/plain -----" in lines
    assert "----- text/html -----" in lines
    assert "Hi Ana <3," in out  # text part, derived from the HTML
    assert "<p>Hi Ana &lt;3,</p>" in out  # HTML part, escaped


async def test_render_transactional_uses_latest_event(db, clock, make_config):
    config = make_config()
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    await add_event(db, "u1", "purchase", {"order": "A-1", "total": 5}, clock)
    clock.advance(minutes=1)
    await add_event(db, "u1", "purchase", {"order": "A-2", "total": 7}, clock)

    code, out, _ = await render(config, db, "receipt", "u1")

    assert code == 0
    assert "Subject: Receipt for order A-2" in out
    assert "Kind: transactional (transaction order-receipt)" in out
    assert "List-Unsubscribe" not in out
    assert "Hi Ana, thanks for order A-2." in out


async def test_render_shows_keywords_as_placeholders(db, clock, make_config):
    config = make_config(
        templates={"nudge": {"subject": "{{ discount }} off", "html": "templates/nudge.html.j2"}},
        files={"templates/nudge.html.j2": "<p>{{ discount }}</p>"},
    )
    await add_user(db, "u1", clock, email="ana@example.test")

    code, out, _ = await render(config, db, "nudge", "u1")

    assert code == 0
    assert "Subject: <discount> off" in out
    assert "Note: send_email keywords shown as placeholders: discount" in out


async def test_render_unknown_template(db, clock, make_config):
    await add_user(db, "u1", clock, email="ana@example.test")
    code, out, err = await render(make_config(), db, "nope", "u1")
    assert code == 1
    assert out == ""
    assert "unknown template 'nope'; defined templates: receipt, welcome" in err


async def test_render_unknown_user(db, make_config):
    code, out, err = await render(make_config(), db, "welcome", "ghost")
    assert code == 1
    assert out == ""
    assert "no user with id 'ghost'" in err


async def test_render_transactional_without_event(db, clock, make_config):
    await add_user(db, "u1", clock, email="ana@example.test", name="Ana")
    code, _, err = await render(make_config(), db, "receipt", "u1")
    assert code == 1
    assert "has none" in err
    assert "purchase" in err


async def test_render_error_is_reported(db, clock, make_config):
    await add_user(db, "u1", clock, email="ana@example.test")  # no name attribute
    code, _, err = await render(make_config(), db, "welcome", "u1")
    assert code == 1
    assert "has no attribute 'name'" in err


async def test_render_warns_without_email(db, clock, make_config):
    await add_user(db, "u1", clock, name="Ana")
    code, out, err = await render(make_config(), db, "welcome", "u1")
    assert code == 0
    assert "To: (no valid email attribute)" in out
    assert "delivery of this message would fail" in err
