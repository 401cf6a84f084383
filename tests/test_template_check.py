"""check_templates: every template compiled and rendered for a sample user before deploy."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflowd.config import load_config
from segflowd.messages.check import SampleValue, check_templates
from test_message_support import make_config  # noqa: F401 - fixture

REPOSITORY = Path(__file__).resolve().parent.parent


def config_with(make_config, html, *, subject="Hi", transactional=False, text=None, files=None):
    entry = {"subject": subject, "html": "templates/t.html.j2"}
    all_files = {"templates/t.html.j2": html, **(files or {})}
    if text is not None:
        entry["text"] = "templates/t.txt.j2"
        all_files["templates/t.txt.j2"] = text
    transactions = {"order-receipt": {"event": "purchase", "template": "receipt"}}
    if transactional:
        transactions["order"] = {"event": "purchase", "template": "t"}
    return make_config(templates={"t": entry}, files=all_files, transactions=transactions)


def test_example_project_templates_pass():
    config = load_config(REPOSITORY / "segflow.yaml", extend_sys_path=False)
    assert check_templates(config) == []


def test_base_templates_pass(make_config):
    assert check_templates(make_config()) == []


@pytest.mark.parametrize(
    "html",
    [
        "{{ '%.2f' | format(user.balance) }} {{ user.age + 1 }} {{ user.score * 2 }} {{ user.points // 3 }}",
        "{% for item in user.orders %}{{ item.name }} {{ item.price | round(2) }}{% endfor %}",
        "{{ user.tags | join(', ') }} {{ user.plan | upper }} {{ user.count | int }} {{ user.ratio | float }}",
        "{% if user.vip and user.age > 18 %}vip{% endif %} {{ user.address.city.title() }}",
        "{{ user.get('nickname', user.name) }} {{ user.id }} {{ user.email }} {{ campaign }} {{ discount }}",
        "{{ user.signup | default('') }} {{ user.items_list | length }} {{ user.friends | sum(attribute='n') }}",
    ],
)
def test_sample_user_renders_unknown_attributes(make_config, html):
    assert check_templates(config_with(make_config, html)) == []


def test_syntax_error_is_reported_with_line(make_config):
    config = config_with(make_config, "<p>ok</p>\n<p>{{ user.name }</p>\n")
    [error] = check_templates(config)
    assert error.startswith("template 't': ")
    assert f"{config.root / 'templates/t.html.j2'}, line 2" in error


def test_unknown_filter_is_reported(make_config):
    [error] = check_templates(config_with(make_config, "<p>{{ user.name | shout }}</p>"))
    assert "shout" in error
    assert "template 't'" in error


def test_misspelled_built_in_is_reported(make_config):
    config = config_with(make_config, "<p>line one</p>\n<p>{{ usr.name }}</p>\n")
    [error] = check_templates(config)
    assert "'usr' is undefined; did you mean 'user'?" in error
    assert f"{config.root / 'templates/t.html.j2'}, line 2" in error


def test_misspelled_unsubscribe_url_is_reported(make_config):
    [error] = check_templates(config_with(make_config, "<a href='{{ unsubscribe_ur }}'>x</a>"))
    assert "did you mean 'unsubscribe_url'?" in error


def test_keyword_in_transactional_template_is_reported(make_config):
    [error] = check_templates(config_with(make_config, "<p>{{ discount }}</p>", transactional=True))
    assert "'discount' is undefined" in error
    assert "transactions (order)" in error


def test_misspelled_event_key_is_reported(make_config):
    config = config_with(make_config, "<p>{{ event.atributes.total }}</p>", transactional=True)
    [error] = check_templates(config)
    assert "atributes" in error
    assert "a sample 'purchase' event" in error


def test_transactional_template_renders_with_sample_event(make_config):
    html = "<p>{{ event.name }} #{{ event.id }} on {{ event.timestamp[:10] }}: {{ event.attributes.total }}</p>"
    assert check_templates(config_with(make_config, html, transactional=True)) == []


def test_error_in_text_template_is_reported(make_config):
    config = config_with(make_config, "<p>ok</p>", text="Hi {{ user.name }}\n{% endfor %}\n")
    [error] = check_templates(config)
    assert f"{config.root / 'templates/t.txt.j2'}, line 2" in error


def test_error_in_subject_is_reported(make_config):
    config = config_with(make_config, "<p>ok</p>", subject="Hi {{ user.name | nope }}")
    [error] = check_templates(config)
    assert "templates.t.subject" in error


def test_sandbox_violation_is_reported(make_config):
    [error] = check_templates(config_with(make_config, "{{ user.name.__class__.__mro__ }}"))
    assert "template 't'" in error


def test_missing_include_is_reported(make_config):
    [error] = check_templates(config_with(make_config, "{% include '_nowhere.html.j2' %}"))
    assert "_nowhere.html.j2" in error


def test_every_broken_template_is_listed(make_config):
    config = make_config(
        templates={
            "a": {"subject": "x", "html": "templates/a.html.j2"},
            "b": {"subject": "x", "html": "templates/b.html.j2"},
        },
        files={"templates/a.html.j2": "{{ usr }}", "templates/b.html.j2": "{% if %}"},
    )
    errors = check_templates(config)
    assert [error.split(":")[0] for error in errors] == ["template 'a'", "template 'b'"]


def test_event_in_campaign_template_is_reported(make_config):
    [error] = check_templates(config_with(make_config, "<p>{{ event.name }}</p>"))
    assert "campaign mail, where event is None" in error


def test_template_file_deleted_after_loading(make_config):
    config = config_with(make_config, "<p>x</p>")
    (config.root / "templates/t.html.j2").unlink()
    [error] = check_templates(config)
    assert "not found" in error


def test_bad_sender_is_reported(make_config):
    config = make_config(email={"from": "Acme <not@valid@x>"})
    [error] = check_templates(config)
    assert "email.from" in error


def test_sample_value_behaves_as_string_number_and_object():
    value = SampleValue("<user.plan>")
    assert value.upper() == "<USER.PLAN>"
    assert value.tier == "<user.plan.tier>"
    assert float(value) == 1.0
    assert value + 1 is value
    assert (value > 3) is True
    assert list(value) == ["<user.plan[0]>"]


def test_transaction_name_too_long_for_keys(make_config):
    name = "t" * 230
    config = make_config(transactions={name: {"event": "purchase", "template": "receipt"}})
    [error] = check_templates(config)
    assert "too long for message keys" in error
    assert "at most 222 characters" in error
