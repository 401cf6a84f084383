"""Campaigns end to end: HTTP ingest, the real segment engine, enrollment, flows and the scheduler.

Background tasks are off; each test runs due steps itself after moving the
fake clock, so the order of events is exact.
"""

from __future__ import annotations

from datetime import timedelta

from conftest import AUTH
from flowcases.harness import TEMPLATES, messages, pending, runs, templates_sent

SEGMENTS = {
    "all-users": {"sql": "SELECT id FROM users"},
    "vip": {"sql": "SELECT id FROM users WHERE attributes->>'$.vip' = 'true'"},
    "unsubscribed": {"sql": "SELECT id FROM users WHERE attributes->>'$.unsubscribed' = 'true'"},
    "big-spenders": {
        "sql": "SELECT user_id AS id FROM events WHERE name = 'purchase' "
               "GROUP BY user_id HAVING SUM(attributes->>'$.amount') > 100"
    },
}


def _overrides(campaigns):
    return {
        "segments": SEGMENTS,
        "templates": {name: {"subject": name, "html": f"templates/{name}.html.j2"} for name in TEMPLATES},
        "campaigns": campaigns,
    }


FILES = {f"templates/{name}.html.j2": f"<p>{name}</p>\n" for name in TEMPLATES}


async def _start(api, campaigns):
    client, services = await api(_overrides(campaigns), FILES)
    return client, services


async def _post_user(client, user_id, **attributes):
    response = await client.post(f"/api/user/{user_id}", json={"attributes": attributes}, headers=AUTH)
    assert response.status in (200, 201), await response.text()


async def _event(client, user_id, name, **attributes):
    response = await client.post(f"/api/user/{user_id}/event/{name}", json={"attributes": attributes}, headers=AUTH)
    assert response.status in (200, 201), await response.text()


async def test_readme_flow_over_http(api, db, clock):
    client, services = await _start(
        api, {"onboarding": {"segments": ["all-users"], "exclude": ["unsubscribed"], "flow": "flowcases.onboarding:onboarding"}}
    )
    engine = services.campaigns
    await _post_user(client, "u1", email="ann@example.test", name="Ann")
    assert await engine.run_due_steps() == 1
    assert await templates_sent(db, "u1") == ["welcome"]

    user = await (await client.get("/api/user/u1", headers=AUTH)).json()
    [run] = user["campaigns"]
    assert run["campaign"] == "onboarding"
    assert run["status"] == "active"
    assert run["next_step_due_at"].startswith("2026-03-02T12:00:00")

    clock.advance(days=1)
    await engine.run_due_steps()
    clock.advance(hours=2)
    await _event(client, "u1", "purchase", amount=40)
    assert await engine.run_due_steps() == 1

    assert await templates_sent(db, "u1") == ["welcome", "complete-profile"]
    [run] = await runs(db, "u1")
    assert run["status"] == "completed"
    user = await (await client.get("/api/user/u1", headers=AUTH)).json()
    assert user["attributes"]["onboarded"] is True
    assert user["campaigns"][0]["status"] == "completed"


async def test_dynamic_campaign_follows_segment_sql(api, db, clock):
    client, services = await _start(
        api, {"vip-care": {"segments": ["vip"], "behavior": "dynamic", "flow": "flowcases.kinds:send_wait_send"}}
    )
    engine = services.campaigns
    await _post_user(client, "u1", vip=True)
    await engine.run_due_steps()
    assert await templates_sent(db, "u1") == ["welcome"]

    await _post_user(client, "u1", vip=False)
    [run] = await runs(db, "u1")
    assert run["status"] == "exited"
    assert await pending(db, run["id"]) is None
    clock.advance(days=1)
    assert await engine.run_due_steps() == 0
    assert await templates_sent(db, "u1") == ["welcome"]

    await _post_user(client, "u1", vip=True)
    await engine.run_due_steps()
    assert [run["status"] for run in await runs(db, "u1")] == ["exited", "active"]
    assert await templates_sent(db, "u1") == ["welcome", "welcome"]


async def test_static_campaign_once_through_segment_sql(api, db, clock):
    client, services = await _start(api, {"vip-once": {"segments": ["vip"], "flow": "flowcases.kinds:send_once"}})
    for vip in (True, False, True, False, True):
        await _post_user(client, "u1", vip=vip)
        await services.campaigns.run_due_steps()
    assert [run["status"] for run in await runs(db, "u1")] == ["completed"]
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_event_segment_enrolls(api, db, clock):
    client, services = await _start(api, {"big": {"segments": ["big-spenders"], "flow": "flowcases.kinds:send_once"}})
    await _event(client, "u1", "purchase", amount=60)
    await services.campaigns.run_due_steps()
    assert await runs(db, "u1") == []
    await _event(client, "u1", "purchase", amount=60)
    await services.campaigns.run_due_steps()
    assert await templates_sent(db, "u1") == ["welcome"]


async def test_update_user_exits_dynamic_run_through_segment_engine(api, db, clock):
    client, services = await _start(
        api, {"vip-care": {"segments": ["vip"], "behavior": "dynamic", "flow": "flowcases.kinds:leave_vip"}}
    )
    await _post_user(client, "u1", vip=True)
    await services.campaigns.run_due_steps()
    [run] = await runs(db, "u1")
    assert run["status"] == "exited"
    assert await messages(db, "u1") == []
    user = await (await client.get("/api/user/u1", headers=AUTH)).json()
    assert user["attributes"]["vip"] is False
    assert "vip" not in user["segments"]


async def test_excluded_segment_stops_enrollment(api, db, clock):
    client, services = await _start(
        api, {"news": {"segments": ["all-users"], "exclude": ["unsubscribed"], "flow": "flowcases.kinds:send_once"}}
    )
    await _post_user(client, "u1", unsubscribed=True)
    await services.campaigns.run_due_steps()
    assert await runs(db, "u1") == []


async def test_delete_user_stops_runs(api, db, clock):
    client, services = await _start(api, {"drip": {"segments": ["all-users"], "flow": "flowcases.kinds:daily_reminders"}})
    await _post_user(client, "u1")
    await services.campaigns.run_due_steps()
    response = await client.delete("/api/user/u1", headers=AUTH)
    assert response.status in (200, 204)
    [run] = await runs(db, "u1")
    assert run["status"] == "exited"
    clock.advance(days=1)
    assert await services.campaigns.run_due_steps() == 0
    assert len(await templates_sent(db, "u1")) == 1


async def test_purchase_wakes_wait_before_timeout_over_http(api, db, clock):
    client, services = await _start(api, {"nudge": {"segments": ["all-users"], "flow": "flowcases.kinds:wait_for_purchase"}})
    await _post_user(client, "u1")
    await services.campaigns.run_due_steps()
    clock.advance(days=2)
    await _event(client, "u1", "purchase", amount=12)
    [run] = await runs(db, "u1")
    assert (await pending(db, run["id"]))["due_at"] == clock.now()
    await services.campaigns.run_due_steps()
    [message] = await messages(db, "u1")
    assert message["template"] == "reminder"
    assert message["context"]["params"] == {"amount": 12}
    assert clock.now() < run["started_at"] + timedelta(days=7)


async def test_metrics_expose_steps_and_lag(api, db, clock):
    client, services = await _start(api, {"news": {"segments": ["all-users"], "flow": "flowcases.kinds:send_once"}})
    await _post_user(client, "u1")
    clock.advance(seconds=3)
    await services.campaigns.run_due_steps()
    text = await (await client.get("/metrics")).text()
    assert 'segflowd_campaign_steps_total{kind="send_email",outcome="ok"}' in text
    assert "segflowd_scheduler_lag_seconds_bucket" in text
    assert 'segflowd_campaign_runs_ended_total{campaign="news",status="completed"}' in text
    assert 'segflowd_campaign_runs_started_total{campaign="news"}' in text
