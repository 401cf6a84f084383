"""The onboarding flow from the README: send, wait, branch on an attribute, wait for a purchase."""

from datetime import timedelta


def onboarding(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(days=1)
    if not user.get("profile_completed"):
        yield rt.send_email("complete-profile")
    purchase = yield rt.wait_for_event("purchase", timeout=timedelta(days=7))
    if purchase is None:
        yield rt.send_email("first-purchase-nudge", discount="10%")
    yield rt.update_user(onboarded=True)
