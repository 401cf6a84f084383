"""Jinja2 templates: loading, sandboxed rendering and error locations.

Each configured template has a subject (a string in the config), an HTML
file and an optional text file. HTML is autoescaped; the subject and the
text part are not (they are not HTML). An undefined variable is an error,
never an empty string, so a typo cannot send a half-empty message.
`{% extends %}` and `{% include %}` names are looked up in the folders of
the configured template files, then in the config's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from segflowd.config import Config, TemplateConfig
from segflowd.messages.htmltext import html_to_text
from segflowd.messages.queue import RESERVED_NAMES

# Loader names of subjects, which live in the config file instead of a file
# of their own.
_SUBJECT_PREFIX = "subject:"


class TemplateError(Exception):
    """A template that cannot be compiled or rendered.

    The message names the template, the file and the line, as in
    `template 'welcome': flows/templates/welcome.html.j2, line 3: 'user' is undefined`.
    """

    def __init__(self, template: str, location: str, problem: str) -> None:
        self.template = template
        self.location = location
        self.problem = problem
        super().__init__(f"template {template!r}: {location}: {problem}")


@dataclass(frozen=True)
class Rendered:
    """The three rendered parts of one message."""

    subject: str
    html: str
    text: str


class _ConfigLoader(jinja2.BaseLoader):
    """Loads template files by absolute path or by name from the search folders, and subjects from the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        folders: list[Path] = []
        for template in config.templates.values():
            for path in (template.html, template.text):
                if path is not None and path.parent not in folders:
                    folders.append(path.parent)
        if config.root not in folders:
            folders.append(config.root)
        self.folders = folders

    def get_source(self, environment: jinja2.Environment, name: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        if name.startswith(_SUBJECT_PREFIX):
            template = self.config.templates.get(name[len(_SUBJECT_PREFIX):])
            if template is None:
                raise jinja2.TemplateNotFound(name)
            return template.subject, None, None
        if os.path.isabs(name):
            candidates = [Path(name)]
        elif ".." in Path(name).parts:
            raise jinja2.TemplateNotFound(name, "template names cannot contain '..'")
        else:
            candidates = [folder / name for folder in self.folders]
        for path in candidates:
            try:
                source = path.read_text(encoding="utf-8")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            return source, str(path), None
        raise jinja2.TemplateNotFound(name)


def _environment(loader: jinja2.BaseLoader, *, html: bool) -> SandboxedEnvironment:
    # Template files are read once per process, as the config is: checking
    # their modification times on every render cost 5% of a send's CPU.
    return SandboxedEnvironment(
        loader=loader,
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )


class Templates:
    """The configured templates, compiled on first use and rendered in a sandbox."""

    def __init__(self, config: Config) -> None:
        self.config = config
        loader = _ConfigLoader(config)
        self._html = _environment(loader, html=True)
        self._text = _environment(loader, html=False)

    def names(self) -> list[str]:
        return sorted(self.config.templates)

    def _config_of(self, name: str) -> TemplateConfig:
        template = self.config.templates.get(name)
        if template is None:
            defined = ", ".join(sorted(self.config.templates)) or "none"
            raise TemplateError(name, str(self.config.path), f"template is not defined in the config; defined templates: {defined}")
        return template

    def _location(self, name: str, part: str, filename: str | None, lineno: int | None) -> str:
        if part == "subject":
            return f"{self.config.path}, templates.{name}.subject"
        where = filename or str(getattr(self._config_of(name), part))
        return f"{where}, line {lineno}" if lineno else where

    def _load(self, name: str, part: str) -> jinja2.Template:
        """Compile one part; raise TemplateError with the file and line of a syntax error."""
        environment = self.environment(part)
        try:
            return environment.get_template(self.source_name(name, part))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(name, self._location(name, part, exc.filename, exc.lineno), exc.message or str(exc)) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(name, self._location(name, part, None, None), f"template file {exc.name} not found") from exc
        except OSError as exc:
            raise TemplateError(name, self._location(name, part, None, None), f"cannot read the file: {exc.strerror}") from exc

    def parts(self, name: str) -> list[str]:
        """Return the parts of a template: subject, html, and text when it has a text file."""
        return ["subject", "html"] + (["text"] if self._config_of(name).text is not None else [])

    def environment(self, part: str) -> SandboxedEnvironment:
        """Return the environment that renders a part: autoescaping for html only."""
        return self._html if part == "html" else self._text

    def source_name(self, name: str, part: str) -> str:
        """Return the loader name of a part: a file path, or the subject's name in the config."""
        config = self._config_of(name)
        return _SUBJECT_PREFIX + name if part == "subject" else str(getattr(config, part))

    def location(self, name: str, part: str, filename: str | None, lineno: int | None) -> str:
        """Describe where a part's problem is: the file and line, or the config key of a subject."""
        return self._location(name, part, filename, lineno)

    def compile(self, name: str) -> None:
        """Compile every part of a template; raise TemplateError on the first problem."""
        config = self._config_of(name)
        self._load(name, "subject")
        self._load(name, "html")
        if config.text is not None:
            self._load(name, "text")

    def _render_part(self, name: str, part: str, context: Mapping[str, Any]) -> str:
        template = self._load(name, part)
        try:
            return template.render(context)
        except jinja2.TemplateSyntaxError as exc:  # an included file with a syntax error
            raise TemplateError(name, self._location(name, part, exc.filename, exc.lineno), exc.message or str(exc)) from exc
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(name, self._location(name, part, None, None), f"included template {exc.name} not found") from exc
        except Exception as exc:  # noqa: BLE001 - any error raised by template code fails this message
            filename, lineno = _template_frame(exc.__traceback__)
            problem = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
            raise TemplateError(name, self._location(name, part, filename, lineno), problem) from exc

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        """Render subject, HTML and text; the text is derived from the HTML when there is no text template."""
        config = self._config_of(name)
        subject = self._render_part(name, "subject", context)
        html = self._render_part(name, "html", context)
        text = self._render_part(name, "text", context) if config.text is not None else html_to_text(html)
        return Rendered(subject=subject, html=html, text=text)


def template_context(
    stored: Mapping[str, Any], *, unsubscribe_url: str, campaign: str | None = None
) -> dict[str, Any]:
    """Build the template variables from a message's stored context.

    `user`, `event`, `campaign`, `unsubscribe_url`, and each send_email
    keyword under its own name. Raises ValueError when a keyword clashes
    with a built-in name.
    """
    params = dict(stored.get("params") or {})
    # Keys at the top level other than the documented four are taken as
    # keywords too, so a context stored without a "params" mapping renders.
    for key, value in stored.items():
        if key not in ("user", "event", "campaign", "params"):
            params.setdefault(key, value)
    clashes = sorted(RESERVED_NAMES & params.keys())
    if clashes:
        raise ValueError(f"send_email keyword {clashes[0]!r} clashes with a built-in template variable; rename it")
    return {
        **params,
        "user": dict(stored.get("user") or {}),
        "event": stored.get("event"),
        "campaign": stored.get("campaign") or campaign,
        "unsubscribe_url": unsubscribe_url,
    }


def _template_frame(tb: TracebackType | None) -> tuple[str | None, int | None]:
    """Find the file and line of the innermost template frame of a rendering error.

    Jinja2 rewrites tracebacks so that frames of template code carry the
    template's file name and line number.
    """
    found: tuple[str | None, int | None] = (None, None)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.endswith(".py") and not filename.startswith("<frozen"):
            found = (None if filename == "<template>" else filename, tb.tb_lineno)
        tb = tb.tb_next
    return found


