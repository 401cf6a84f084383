"""Small flows, one behaviour each."""

from datetime import timedelta


def send_once(user, rt):
    yield rt.send_email("welcome", plan=user.get("plan"))


def send_wait_send(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(hours=2, minutes=30)
    yield rt.send_email("reminder")


def wait_timedelta(user, rt):
    yield rt.wait(timedelta(days=3))
    yield rt.send_email("reminder")


def wait_for_purchase(user, rt):
    purchase = yield rt.wait_for_event("purchase", timeout=timedelta(days=7))
    if purchase is None:
        yield rt.send_email("first-purchase-nudge")
    else:
        yield rt.send_email("reminder", amount=purchase.get("amount"))


def mark_onboarded(user, rt):
    yield rt.update_user(onboarded=True, plan="pro")
    yield rt.send_email("welcome", plan=user["plan"], onboarded=user["onboarded"])


def leave_vip(user, rt):
    """Drops the attribute that keeps the user in the campaign's segment, then tries to send."""
    yield rt.update_user(vip=False)
    yield rt.send_email("goodbye")


def daily_reminders(user, rt):
    for _ in range(5):
        yield rt.send_email("reminder")
        yield rt.wait(days=1)


def returns_at_once(user, rt):
    return
    yield  # noqa: makes this a generator function


def raises_after_send(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(hours=1)
    raise ValueError("flow bug: no discount for plan " + repr(user.get("plan")))


def yields_garbage(user, rt):
    yield "send welcome"


def forgets_yield(user, rt):
    rt.send_email("welcome")
    yield rt.wait(days=1)


def unknown_template(user, rt):
    yield rt.send_email("no-such-template")


def not_json(user, rt):
    yield rt.send_email("welcome", when=object())


def endless_sends(user, rt):
    while True:
        yield rt.send_email("reminder")


def mutates_user(user, rt):
    user["plan"] = "free"
    yield rt.send_email("welcome")


def sees_user(user, rt):
    """Records what it saw in each step's parameters."""
    yield rt.send_email("welcome", plan=user.get("plan"))
    yield rt.wait(days=1)
    yield rt.send_email("reminder", plan=user.get("plan"))
