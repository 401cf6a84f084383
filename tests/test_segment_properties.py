"""Per-user evaluation agrees with full evaluation for every corpus query.

Hypothesis draws random users and events. For each draw, every corpus
segment is computed three ways on the real server, and all three must
agree: its SQL alone over all users, per user with the user filter pushed
in, and a full evaluation in batches of two users with the range filter
pushed in.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_segment_corpus import NOW, corpus_config, epoch, full_members, load_fixture, per_user_members

from segflowd.clock import FakeClock
from segflowd.segments.engine import SegmentEngine

# Ids that exercise quoting, `%` escaping, case and non-ASCII characters.
USER_IDS = ["ana", "Ana", "o'brien", "100%", "zoë", "u_1", "b", "a b"]
# Purchases twice as often, so that rankings and sums over buyers have ties and runners-up.
EVENT_NAMES = ["purchase", "purchase", "refund", "page_view", "signup", "cart_abandoned"]
TABLES = ["segment_changes", "segment_members", "segment_definitions", "events", "users"]

attributes = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.sampled_from(["pro", "max", "free", "PRO", 5, None, True]),
        "email": st.sampled_from(["x@acme.com", "y@ACME.com", "z@example.org", "w@acme.com.evil.org"]),
        "country": st.sampled_from(["DE", "FR", "IT", "US", "de"]),
        "age": st.one_of(st.integers(0, 90), st.floats(0, 90, allow_nan=False), st.sampled_from(["thirty", None])),
        "tags": st.lists(st.sampled_from(["beta", "vip", "alpha"]), max_size=3),
        "newsletter": st.sampled_from([True, False, 1, 0, "yes"]),
        "vip": st.sampled_from([True, False, "true", 1]),
        "locale": st.sampled_from(["en", "de", None]),
        "birthday": st.sampled_from(["1990-06-15", "1985-06-14", "2000-01-01", "not a date"]),
        "trial_ends": st.integers(epoch(NOW) - 86400, epoch(NOW) + 5 * 86400),
        "phone": st.sampled_from(["+4915112345", "+1555000", "+49"]),
        "referred_by": st.sampled_from(USER_IDS),
        "first name": st.sampled_from(["Finn", "finn"]),
    },
)

event_attributes = st.fixed_dictionaries(
    {},
    optional={
        "amount": st.one_of(st.integers(0, 1500), st.floats(0, 1500, allow_nan=False), st.just("12")),
        "currency": st.sampled_from(["EUR", "USD", "eur"]),
        "items": st.lists(st.fixed_dictionaries({"sku": st.sampled_from(["A1", "B7"])}), max_size=2),
    },
)


@st.composite
def datasets(draw):
    user_ids = draw(st.lists(st.sampled_from(USER_IDS), min_size=1, max_size=8, unique=True))
    users = {
        user_id: (draw(attributes), NOW - timedelta(days=draw(st.integers(0, 400)), hours=draw(st.integers(0, 23))))
        for user_id in user_ids
    }
    events = []
    for index in range(draw(st.integers(0, 30))):
        # Distinct times, so "the latest event" is never a tie.
        created = NOW - timedelta(days=draw(st.integers(0, 120)), seconds=index)
        events.append((draw(st.sampled_from(user_ids)), draw(st.sampled_from(EVENT_NAMES)), draw(event_attributes), created))
    return users, events


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=datasets())
async def test_per_user_equals_full_for_every_corpus_query(db, data):
    users, events = data
    async with db.transaction() as cur:
        for table in TABLES:
            await cur.execute(f"DELETE FROM {table}")
    await load_fixture(db, users, events)
    engine = SegmentEngine(corpus_config(), db, FakeClock(NOW), batch_size=2)

    per_user = await per_user_members(db, engine, sorted(users), NOW)
    for name in engine.segments:
        full = await full_members(db, engine, name, NOW)
        assert per_user[name] == full, name
        await engine.refresh_segment(name)
        rows = await db.fetch_all("SELECT user_id FROM segment_members WHERE segment = %s", (name,))
        assert {row["user_id"] for row in rows} == full, name
