"""`segflowd check` reads send_email calls: unknown templates and variables no call passes."""

from __future__ import annotations

from segflowd.campaigns.check import check_flows
from segflowd.config import load_config

FLOWS = '''
def good(user, rt):
    yield rt.send_email("offer", discount="10%")


def typo_in_name(user, rt):
    yield rt.wait(days=1)
    yield rt.send_email("ofer", discount="10%")


def missing_keyword(user, rt):
    yield rt.send_email("offer", discont="10%")


def passes_everything(user, rt):
    extra = {"discount": "5%"}
    yield rt.send_email("offer", **extra)
'''

OFFER = "<p>{{ user.name }}: {{ discount }} off. {% set note = 'x' %}{{ note }} {{ range(2) | list }}</p>"


def errors_for(write_config, function: str) -> list[str]:
    path = write_config(
        {
            "segments": {"everyone": {"sql": "SELECT id FROM users"}},
            "templates": {"offer": {"subject": "{{ discount }} off", "html": "offer.html"}},
            "campaigns": {"c": {"segments": ["everyone"], "flow": f"checkcase_flows:{function}"}},
        },
        files={"checkcase_flows.py": FLOWS, "offer.html": OFFER},
    )
    return check_flows(load_config(path))


def test_good_flow_has_no_errors(write_config):
    assert errors_for(write_config, "good") == []


def test_unknown_template_name_is_reported(write_config):
    [error] = errors_for(write_config, "typo_in_name")
    assert "campaigns.c.flow" in error
    assert "line 8" in error
    assert "send_email('ofer') names a template that is not defined; defined templates: offer" in error


def test_variable_no_call_passes_is_reported(write_config):
    [error] = errors_for(write_config, "missing_keyword")
    assert "template 'offer' uses discount, which this send_email call does not pass (it passes discont)" in error


def test_spread_keywords_are_not_judged(write_config):
    assert errors_for(write_config, "passes_everything") == []
