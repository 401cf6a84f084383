"""The flow runtime: step arguments, signatures, the read-only user, and the driver."""

from datetime import timedelta

import pytest

from segflowd.campaigns.replay import FlowDriver, FlowFailure, JournalEntry, same_step
from segflowd.campaigns.steps import Runtime, Step, UserView, describe_step
from flowcases import kinds


@pytest.fixture
def rt():
    return Runtime("onboarding", 1, "u1")


def test_send_email_signature(rt):
    step = rt.send_email("welcome", discount="10%", items=(1, 2))
    assert step.kind == "send_email"
    assert step.signature == {"template": "welcome", "params": {"discount": "10%", "items": [1, 2]}}


@pytest.mark.parametrize("template", ["", None, 3])
def test_send_email_rejects_bad_template(rt, template):
    with pytest.raises(TypeError, match="template name"):
        rt.send_email(template)


@pytest.mark.parametrize("name", ["user", "event", "campaign", "unsubscribe_url", "params"])
def test_send_email_rejects_reserved_keyword(rt, name):
    with pytest.raises(ValueError, match=f"keyword '{name}' is a variable the template context defines"):
        rt.send_email("welcome", **{name: "x"})


def test_send_email_rejects_non_json_params(rt):
    with pytest.raises(TypeError, match="must be JSON data"):
        rt.send_email("welcome", when=object())


def test_send_email_rejects_nan(rt):
    with pytest.raises(TypeError, match="must be JSON data"):
        rt.send_email("welcome", score=float("nan"))


@pytest.mark.parametrize(
    "call, seconds",
    [
        (lambda rt: rt.wait(seconds=30), 30.0),
        (lambda rt: rt.wait(minutes=2), 120.0),
        (lambda rt: rt.wait(hours=2, minutes=30), 9000.0),
        (lambda rt: rt.wait(days=1), 86400.0),
        (lambda rt: rt.wait(weeks=1), 604800.0),
        (lambda rt: rt.wait(days=0.5), 43200.0),
        (lambda rt: rt.wait(timedelta(days=3)), 259200.0),
        (lambda rt: rt.wait(seconds=0), 0.0),
    ],
)
def test_wait_units(rt, call, seconds):
    assert call(rt).signature == {"seconds": seconds}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda rt: rt.wait(), "needs a duration"),
        (lambda rt: rt.wait(months=1), "unknown keyword 'months'"),
        (lambda rt: rt.wait(timedelta(days=1), hours=1), "not both"),
        (lambda rt: rt.wait(5), "takes a timedelta"),
        (lambda rt: rt.wait(days="1"), "timedelta or a number"),
        (lambda rt: rt.wait(days=True), "timedelta or a number"),
    ],
)
def test_wait_rejects_bad_arguments(rt, call, message):
    with pytest.raises(TypeError, match=message):
        call(rt)


def test_wait_rejects_negative(rt):
    with pytest.raises(ValueError, match="zero or more seconds"):
        rt.wait(hours=-1)


@pytest.mark.parametrize(
    "call",
    [
        lambda rt: rt.wait(days=36_501),
        lambda rt: rt.wait(weeks=5_214, days=3),
        lambda rt: rt.wait(timedelta(days=999_999)),
        lambda rt: rt.wait_for_event("purchase", timedelta(days=40_000)),
    ],
)
def test_wait_rejects_centuries(rt, call):
    with pytest.raises(ValueError, match="at most 36500 days"):
        call(rt)


def test_wait_for_event_signature(rt):
    assert rt.wait_for_event("purchase", timeout=timedelta(days=7)).signature == {
        "event": "purchase",
        "timeout_seconds": 604800.0,
    }
    assert rt.wait_for_event("purchase", 60).signature["timeout_seconds"] == 60.0


def test_wait_for_event_rejects_bad_arguments(rt):
    with pytest.raises(TypeError, match="event name"):
        rt.wait_for_event("", timedelta(days=1))
    with pytest.raises(TypeError, match="timeout must be a timedelta"):
        rt.wait_for_event("purchase", "7d")
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        rt.wait_for_event("purchase")


def test_update_user_signature(rt):
    assert rt.update_user(onboarded=True, plan=None).signature == {"attributes": {"onboarded": True, "plan": None}}


def test_update_user_rejects_bad_arguments(rt):
    with pytest.raises(TypeError, match="at least one attribute"):
        rt.update_user()
    with pytest.raises(ValueError, match="cannot change the user's id"):
        rt.update_user(id="other")
    with pytest.raises(TypeError, match="must be JSON data"):
        rt.update_user(seen=object())


def test_describe_step():
    assert describe_step("send_email", {"template": "welcome", "params": {"a": 1}}) == "send_email('welcome', a=1)"
    assert describe_step("wait", {"seconds": 60.0}) == "wait(seconds=60.0)"
    assert describe_step("update_user", {"attributes": {"x": True}}) == "update_user(x=True)"


def test_user_view_is_read_only():
    user = UserView({"id": "u1", "plan": "trial"})
    assert user["plan"] == "trial"
    assert user.get("missing") is None
    assert dict(user) == {"id": "u1", "plan": "trial"}
    with pytest.raises(TypeError, match="rt.update_user"):
        user["plan"] = "pro"
    with pytest.raises(TypeError, match="rt.update_user"):
        del user["plan"]


def test_user_view_snapshot_is_a_copy():
    data = {"id": "u1", "tags": ["a"]}
    user = UserView(data)
    data["tags"].append("b")
    snapshot = user.snapshot()
    snapshot["tags"].append("c")
    assert user["tags"] == ["a"]


def test_driver_runs_flow_to_end():
    driver = FlowDriver(kinds.send_wait_send, Runtime("c", 1, "u1"), {"id": "u1"})
    assert driver.advance(None).kind == "send_email"
    assert driver.advance(None).kind == "wait"
    assert driver.advance(None).signature["template"] == "reminder"
    assert driver.advance(None) is None


def test_driver_wraps_flow_exception():
    driver = FlowDriver(kinds.raises_after_send, Runtime("c", 1, "u1"), {"id": "u1", "plan": "trial"})
    driver.advance(None)
    driver.advance(None)
    with pytest.raises(FlowFailure) as caught:
        driver.advance(None)
    assert "ValueError: flow bug" in caught.value.message
    assert "raises_after_send" in caught.value.details()


def test_driver_rejects_non_step():
    driver = FlowDriver(kinds.yields_garbage, Runtime("c", 1, "u1"), {"id": "u1"})
    with pytest.raises(FlowFailure, match="yielded 'send welcome'"):
        driver.advance(None)


def test_driver_rejects_forgotten_yield():
    driver = FlowDriver(kinds.forgets_yield, Runtime("c", 1, "u1"), {"id": "u1"})
    with pytest.raises(FlowFailure, match=r"called rt.send_email\('welcome'\) without yielding"):
        driver.advance(None)


def test_driver_reports_mutation_of_user():
    driver = FlowDriver(kinds.mutates_user, Runtime("c", 1, "u1"), {"id": "u1"})
    with pytest.raises(FlowFailure, match="read-only"):
        driver.advance(None)


def test_same_step_compares_kind_and_signature():
    entry = JournalEntry(0, "send_email", {"template": "welcome", "params": {}}, None, {})
    assert same_step(Step("send_email", {"template": "welcome", "params": {}}), entry)
    assert not same_step(Step("send_email", {"template": "welcome", "params": {"v": 1}}), entry)
    assert not same_step(Step("wait", {"template": "welcome", "params": {}}), entry)
