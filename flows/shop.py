"""Campaign flows of the example CD shop.

Each flow is a generator: every `yield` is one step that segflowd records,
so a run survives restarts and is never executed twice.
"""

from datetime import timedelta


def welcome(user, rt):
    """Greet every new customer, then send picks for their favourite genre if they told us one."""
    yield rt.send_email("welcome")
    yield rt.wait(days=2)
    genre = user.get("favorite_genre")
    if genre:
        yield rt.send_email("genre-picks", genre=genre)
    yield rt.update_user(welcomed=True)


def vip(user, rt):
    """Thank big spenders and give them early access a week later."""
    yield rt.send_email("vip-welcome", discount="20%")
    yield rt.wait(weeks=1)
    yield rt.send_email("vip-early-access")


def winback(user, rt):
    """Win back lapsed customers; the run ends by itself when they buy again (dynamic campaign)."""
    # A day's grace first: a customer whose next purchase is on its way in
    # (a backfill, a delayed sync) leaves the segment before any mail.
    yield rt.wait(days=1)
    yield rt.send_email("winback", discount="15%")
    purchase = yield rt.wait_for_event("purchase", timeout=timedelta(days=14))
    if purchase is None:
        yield rt.send_email("winback-last-chance", discount="25%")
