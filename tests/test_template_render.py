"""Templates: escaping, strict undefined variables, the sandbox, error locations, derived text."""

from __future__ import annotations

import pytest

from segflowd.messages.htmltext import html_to_text
from segflowd.messages.templates import TemplateError, Templates, template_context
from test_message_support import make_config  # noqa: F401 - fixture

HOSTILE = "<script>alert('x')</script> & \"Co\""


def context(**user):
    return {"user": {"id": "u1", **user}, "event": None, "campaign": "c", "unsubscribe_url": "https://x.test/u?a=1&b=2"}


def render_one(make_config, html, *, subject="Hi", text=None, name="t", extra_files=None):
    files = {f"templates/{name}.html.j2": html, **(extra_files or {})}
    entry = {"subject": subject, "html": f"templates/{name}.html.j2"}
    if text is not None:
        files[f"templates/{name}.txt.j2"] = text
        entry["text"] = f"templates/{name}.txt.j2"
    config = make_config(templates={name: entry}, files=files)
    return Templates(config), config


def test_html_escapes_user_data(make_config):
    templates, _ = render_one(make_config, "<p>{{ user.name }}</p><a href=\"{{ unsubscribe_url }}\">x</a>",
                              subject="Hello {{ user.name }}", text="Hello {{ user.name }}")
    rendered = templates.render("t", context(name=HOSTILE))

    assert rendered.html == "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;Co&#34;</p>" \
        "<a href=\"https://x.test/u?a=1&amp;b=2\">x</a>"
    assert rendered.text == f"Hello {HOSTILE}"
    assert rendered.subject == f"Hello {HOSTILE}"


def test_derived_text_unescapes_html(make_config):
    templates, _ = render_one(make_config, "<p>{{ user.name }}</p>")
    rendered = templates.render("t", context(name=HOSTILE))
    assert rendered.text == HOSTILE + "\n"


def test_safe_filter_is_explicit(make_config):
    templates, _ = render_one(make_config, "<p>{{ user.bio | safe }}</p>")
    assert templates.render("t", context(bio="<b>bold</b>")).html == "<p><b>bold</b></p>"


def test_undefined_variable_names_file_and_line(make_config):
    templates, config = render_one(make_config, "<p>one</p>\n<p>two</p>\n<p>{{ points }}</p>\n")
    with pytest.raises(TemplateError) as raised:
        templates.render("t", context(name="Ana"))
    message = str(raised.value)
    assert message.startswith("template 't': ")
    assert f"{config.root / 'templates/t.html.j2'}, line 3" in message
    assert "'points' is undefined" in message


def test_undefined_attribute_is_an_error(make_config):
    templates, _ = render_one(make_config, "<p>{{ user.nickname }}</p>")
    with pytest.raises(TemplateError, match="has no attribute 'nickname'"):
        templates.render("t", context(name="Ana"))


def test_defined_test_and_get_work(make_config):
    html = "{% if user.nickname is defined %}{{ user.nickname }}{% else %}{{ user.get('name', 'friend') }}{% endif %}"
    templates, _ = render_one(make_config, html)
    assert templates.render("t", context(name="Ana")).html == "Ana"
    assert templates.render("t", context(nickname="Annie")).html == "Annie"
    assert templates.render("t", context()).html == "friend"


def test_undefined_in_subject_names_config_key(make_config):
    templates, config = render_one(make_config, "<p>x</p>", subject="Hi {{ user.nickname }}")
    with pytest.raises(TemplateError) as raised:
        templates.render("t", context(name="Ana"))
    assert f"{config.path}, templates.t.subject" in str(raised.value)


@pytest.mark.parametrize(
    "expression",
    ["user.__class__.__mro__", "''.__class__.__subclasses__()", "campaign.format.__globals__", "range.__init__"],
)
def test_sandbox_blocks_internals(make_config, expression):
    templates, _ = render_one(make_config, "{{ " + expression + " }}")
    with pytest.raises(TemplateError):
        templates.render("t", context(name="Ana"))


def test_syntax_error_names_file_and_line(make_config):
    templates, config = render_one(make_config, "<p>ok</p>\n{% if user.name %}\n<p>never closed</p>\n")
    with pytest.raises(TemplateError) as raised:
        templates.compile("t")
    assert f"{config.root / 'templates/t.html.j2'}, line" in str(raised.value)
    assert "endif" in str(raised.value)


def test_extends_and_include_from_template_folder(make_config):
    files = {
        "templates/_layout.html.j2": "<main>{% block body %}{% endblock %}</main>{% include '_footer.html.j2' %}",
        "templates/_footer.html.j2": "<footer>{{ unsubscribe_url }}</footer>",
    }
    templates, _ = render_one(
        make_config, "{% extends '_layout.html.j2' %}{% block body %}Hi {{ user.name }}{% endblock %}",
        extra_files=files,
    )
    assert templates.render("t", context(name="Ana")).html == \
        "<main>Hi Ana</main><footer>https://x.test/u?a=1&amp;b=2</footer>"


def test_include_cannot_leave_folders(make_config):
    templates, _ = render_one(make_config, "{% include '../../../etc/passwd' %}")
    with pytest.raises(TemplateError, match="not found"):
        templates.render("t", context(name="Ana"))


def test_error_inside_included_file_names_it(make_config):
    files = {"templates/_part.html.j2": "<p>fine</p>\n<p>{{ missing_thing }}</p>\n"}
    templates, config = render_one(make_config, "{% include '_part.html.j2' %}", extra_files=files)
    with pytest.raises(TemplateError) as raised:
        templates.render("t", context(name="Ana"))
    assert f"{config.root / 'templates/_part.html.j2'}, line 2" in str(raised.value)


def test_template_context_layout():
    stored = {"user": {"id": "u1"}, "event": None, "campaign": "welcome", "params": {"discount": "10%"}}
    result = template_context(stored, unsubscribe_url="https://x.test/u")
    assert result == {
        "discount": "10%", "user": {"id": "u1"}, "event": None, "campaign": "welcome",
        "unsubscribe_url": "https://x.test/u",
    }


def test_template_context_rejects_reserved_keyword():
    stored = {"user": {"id": "u1"}, "params": {"unsubscribe_url": "https://evil.test"}}
    with pytest.raises(ValueError, match="unsubscribe_url"):
        template_context(stored, unsubscribe_url="https://x.test/u")


def test_html_to_text_structure():
    html = """<html><head><title>T</title><style>p {color: red}</style></head><body>
    <h1>Hello   there</h1>
    <p>First line<br>second &amp; last</p>
    <ul><li>one</li><li>two</li></ul>
    <ol><li>first</li><li>second</li></ol>
    <p>Visit <a href="https://acme.test/x">our shop</a> or <a href="https://acme.test/y">https://acme.test/y</a>.</p>
    <script>alert(1)</script>
    <table><tr><td>Total</td><td>$3</td></tr></table>
    <pre>  keep
    spacing</pre>
    </body></html>"""
    assert html_to_text(html) == (
        "Hello there\n\nFirst line\nsecond & last\n\n- one\n- two\n\n1. first\n2. second\n\n"
        "Visit our shop (https://acme.test/x) or https://acme.test/y.\n\nTotal $3\n\n  keep\n    spacing\n"
    )


def test_html_to_text_empty():
    assert html_to_text("") == ""
    assert html_to_text("<style>x</style>") == ""
