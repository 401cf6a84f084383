"""Two versions of one flow: v2 is v1 after an edit that changes an executed step."""


def v1(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(days=1)
    yield rt.send_email("reminder")


def v2(user, rt):
    yield rt.send_email("welcome", variant="b")
    yield rt.wait(days=1)
    yield rt.send_email("reminder")


def v3_shorter(user, rt):
    yield rt.send_email("welcome")


def v4_longer_wait(user, rt):
    yield rt.send_email("welcome")
    yield rt.wait(days=2)
    yield rt.send_email("reminder")


def v5_extra_step(user, rt):
    """Adds a step after the recorded ones: not a divergence, the run simply continues."""
    yield rt.send_email("welcome")
    yield rt.wait(days=1)
    yield rt.send_email("reminder")
    yield rt.send_email("goodbye")
