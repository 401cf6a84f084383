"""Functions that cannot be flows, for `segflowd check`."""


def not_a_generator(user, rt):
    return rt.send_email("welcome")


def one_parameter(user):
    yield user


async def async_flow(user, rt):
    yield rt.send_email("welcome")


def three_parameters(user, rt, extra):
    yield rt.send_email("welcome")


def defaults_are_fine(user, rt, extra=None):
    yield rt.send_email("welcome")


NOT_CALLABLE = 42
