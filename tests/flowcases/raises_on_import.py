"""A flow module that raises at import time."""

RATES = {"pro": 10}
DISCOUNT = RATES["enterprise"]


def flow(user, rt):
    yield rt.send_email("welcome")
