"""Derive a message's text part from its HTML part."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Elements whose content is not shown as text.
_HIDDEN = {"head", "script", "style", "title", "template", "noscript"}
# Elements that start a paragraph: a blank line before and after.
_PARAGRAPHS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol", "dl", "hr"}
# Elements that start a line of their own.
_LINES = {"div", "tr", "li", "dt", "dd", "section", "article", "header", "footer", "address", "center", "form", "figure"}
_SPACE = re.compile(r"[ \t\r\n\f]+")


class _TextBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [is_ordered, next number]
        self.links: list[str | None] = []
        self.link_text: list[int] = []

    # --- output helpers --------------------------------------------------------

    def _text(self) -> str:
        return "".join(self.parts)

    def newlines(self, count: int) -> None:
        """End the current line; `count` 2 leaves a blank line. Never at the very start."""
        text = self._text()
        if not text.strip():
            return
        trailing = len(text) - len(text.rstrip("\n"))
        if trailing < count:
            self.parts.append("\n" * (count - trailing))

    def write(self, text: str) -> None:
        if not text:
            return
        current = self._text()
        if text.startswith(" ") and (not current or current.endswith((" ", "\n"))):
            text = text.lstrip(" ")
        self.parts.append(text)

    # --- parser callbacks ------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
            return
        if self.hidden:
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag in _PARAGRAPHS:
            self.newlines(2)
            if tag == "hr":
                self.parts.append("----")
                self.newlines(2)
            if tag in ("ul", "ol"):
                self.lists.append([tag == "ol", 1])
            if tag == "pre":
                self.pre += 1
        elif tag in _LINES:
            self.newlines(1)
            if tag == "li":
                if self.lists and self.lists[-1][0]:
                    self.write(f"{self.lists[-1][1]}. ")
                    self.lists[-1][1] += 1
                else:
                    self.write("- ")
        elif tag in ("td", "th"):
            self.write(" ")
        elif tag == "a":
            href = dict(attrs).get("href")
            self.links.append(href)
            self.link_text.append(len(self._text()))
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self.write(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
            return
        if self.hidden:
            return
        if tag in _PARAGRAPHS:
            if tag in ("ul", "ol") and self.lists:
                self.lists.pop()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self.newlines(2)
        elif tag in _LINES:
            self.newlines(1)
        elif tag == "a" and self.links:
            href = self.links.pop()
            start = self.link_text.pop()
            shown = self._text()[start:].strip()
            if href and href.startswith(("http://", "https://", "mailto:")):
                target = href[len("mailto:"):] if href.startswith("mailto:") else href
                if target != shown:
                    self.write(f" ({target})" if shown else target)

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if self.pre:
            self.parts.append(data)
        else:
            self.write(_SPACE.sub(" ", data))


def html_to_text(html: str) -> str:
    """Plain text for the text/plain part: paragraphs, line breaks, list items and link targets kept."""
    builder = _TextBuilder()
    builder.feed(html)
    builder.close()
    lines = [line.rstrip() for line in builder._text().split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text else ""
