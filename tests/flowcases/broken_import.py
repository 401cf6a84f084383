"""A flow module whose import fails inside it."""

import segflowd_no_such_dependency  # noqa: F401


def flow(user, rt):
    yield rt.send_email("welcome")
