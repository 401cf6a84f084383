"""`segflowd check` for campaign flows.

Besides importing each flow, it reads the flow's source for
`rt.send_email("template", key=...)` calls with a literal template name,
so that a misspelt template name, or a template variable that no call
passes, is reported before deploy instead of failing runs later.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from segflowd.campaigns.loader import FlowLoadError, load_flow
from segflowd.config import Config, TemplateConfig

# Names every template gets from segflowd itself (see docs/messages.md).
_CONTEXT_NAMES = {"user", "event", "campaign", "unsubscribe_url"}


@dataclass(frozen=True)
class SendEmailCall:
    template: str
    keywords: frozenset[str] | None  # None when the call passes **kwargs
    line: int


def send_email_calls(function: Any) -> tuple[list[SendEmailCall], str | None]:
    """Find the `send_email` calls with a literal template name in a flow's source, and its file."""
    try:
        lines, first_line = inspect.getsourcelines(function)
        file = inspect.getsourcefile(function)
    except (OSError, TypeError):
        return [], None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "send_email"):
            continue
        if not node.args or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
            continue
        names = [keyword.arg for keyword in node.keywords]
        keywords = None if None in names else frozenset(str(name) for name in names)
        calls.append(SendEmailCall(node.args[0].value, keywords, first_line + node.lineno - 1))
    return calls, file


def _template_variables(template: TemplateConfig) -> set[str]:
    """Names a template's subject and files read from their context, besides those they set."""
    environment = jinja2.Environment()
    names: set[str] = set()
    sources = [template.subject]
    for path in (template.html, template.text):
        if path is not None:
            try:
                sources.append(Path(path).read_text(encoding="utf-8"))
            except OSError:
                continue  # the config check reports a missing file
    for source in sources:
        try:
            names |= meta.find_undeclared_variables(environment.parse(source))
        except jinja2.TemplateSyntaxError:
            continue  # the template check reports syntax errors
    return names - set(environment.globals)


def _check_calls(config: Config, where: str, calls: list[SendEmailCall], file: str | None) -> list[str]:
    errors = []
    at = f"{file}" if file else "the flow"
    defined = ", ".join(sorted(config.templates)) or "none"
    for call in calls:
        template = config.templates.get(call.template)
        if template is None:
            errors.append(
                f"{where}: {at}, line {call.line}: send_email({call.template!r}) names a template that is not "
                f"defined; defined templates: {defined}"
            )
            continue
        if call.keywords is None:
            continue
        missing = sorted(_template_variables(template) - _CONTEXT_NAMES - call.keywords)
        if missing:
            passed = ", ".join(sorted(call.keywords)) or "no keywords"
            errors.append(
                f"{where}: {at}, line {call.line}: template {call.template!r} uses "
                f"{', '.join(missing)}, which this send_email call does not pass (it passes {passed}); "
                f"add the keyword or fix the name in the template"
            )
    return errors


def check_flows(config: Config) -> list[str]:
    """Import every campaign's flow and return an error per unusable flow or send_email call."""
    errors: list[str] = []
    for campaign in config.campaigns.values():
        try:
            function = load_flow(config, campaign)
        except FlowLoadError as exc:
            errors.append(str(exc))
            continue
        calls, file = send_email_calls(function)
        errors += _check_calls(config, f"campaigns.{campaign.name}.flow", calls, file)
    return errors
