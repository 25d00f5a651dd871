"""The text of an HTML document that a browser would show, in paragraphs.

LlamaIndex's ``HTMLTagReader`` takes all the text under ``<body>``: scripts, comments and hidden
elements included, which is how words no reader of the page sees reach the index and the LLM.
Here the standard library's tokenizer streams the document (no tree: memory stays near the size
of the text) and only this is kept:

- not the content of ``head``, ``title``, ``script``, ``style``, ``template``, ``noscript``,
  ``iframe``, ``noembed``, ``noframes``, ``datalist``, a ``dialog`` that is not ``open``, nor of
  any element with the ``hidden`` attribute or an inline ``display: none``, ``visibility: hidden``
  or ``visibility: collapse``; nor comments, processing instructions and declarations;
- nor of ``textarea`` and ``xmp``, which a browser does show: a form's default text and
  legacy preformatted markup are rarely what a question is about;
- ``aria-hidden`` text and the body of a closed ``details`` are kept: they are on the page.

It is no CSS engine: text hidden by a stylesheet rule, off-screen, transparent or in the page's
colour is read. Where the tokenizer and a browser could disagree about where a hidden element
ends, it errs on leaving text out: an end tag never closes a block it would not close in a
browser (``<span><div hidden>…</span>`` stays hidden), ``</body>`` and ``</form>`` close nothing,
raw-text elements (``iframe``, ``noscript``, ``textarea``...) end only at their own end tag, and a
hidden ``<b>`` that an end tag closes early hides what a browser would reopen it around.

Blocks become paragraph breaks, ``li``, ``tr`` and ``br`` line breaks, and whitespace collapses
as in a browser except in ``pre``, so the splitter still sees paragraphs. The tokenizer of older
Pythons is quadratic on some malformed input (``<a<a<a...``); the document is fed in slices and
refused once an unterminated construct holds more than ``_MAX_PENDING`` characters. A comment,
tag, doctype or processing instruction left open at the end is dropped, as a browser drops it
(that tokenizer would give it back as text: ``<!-- instructions...`` without ``-->``).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from functions.errors import InvalidRequest

__all__ = ["visible_text"]

_FEED = 4 << 20  # characters per slice fed to the tokenizer (each may rescan the pending)
_MAX_PENDING = 8 << 20  # longest unterminated construct (an inline script) waited for
_CLOSE_PENDING = 4096  # at the end, a longer unterminated construct is dropped, not tokenized
# A comment, tag, doctype or processing instruction that the end of the document cuts short.
_OPEN_MARKUP = re.compile(r"<(?:[!?a-zA-Z]|/.)", re.S)
_MAX_DEPTH = 10_000  # open elements; browsers stop nesting at 512


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_VOID = _names(
    "area base basefont bgsound br col embed frame hr img input keygen link meta param source "
    "track wbr"
)
_HIDES = _names(
    "head title script style template noscript iframe noembed noframes datalist textarea xmp"
)
_RAW_TEXT = _names("script style textarea title xmp iframe noembed noframes noscript")
_HEAD_CONTENT = _names(
    "html head base basefont bgsound link meta title noscript noframes style script template"
)
_CLOSES_P = _names(
    "address article aside blockquote center details dialog dir div dl fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr listing main menu nav ol p pre "
    "search section summary ul xmp"
)
_FORMATTING = _names("a b big code em font i nobr s small strike strong tt u")
_SPECIAL = _CLOSES_P | _names(
    "applet area base basefont bgsound body br button caption col colgroup dd embed frame "
    "frameset head html iframe img input keygen li link marquee meta noembed noframes noscript "
    "object param plaintext script select source style table tbody td template textarea tfoot "
    "th thead title tr track wbr"
)
_SCOPE = _names("applet caption html table td th marquee object template")
_EXTRA_SCOPE = {"li": _names("ol ul"), "p": _names("button")}
_TABLE_SCOPE = _names("html table template")
_TABLE_PARTS = _names("table tbody thead tfoot tr td th caption colgroup")
_NEVER_CLOSED = _names("body html form")
_INTEGRATION = _names("foreignobject desc title mi mo mn ms mtext annotation-xml")
_BREAKOUT = _names(
    "b big blockquote body br center code dd div dl dt em embed h1 h2 h3 h4 h5 h6 head hr i img "
    "li listing menu meta nobr ol p pre ruby s small span strong strike sub sup table tt u ul var"
)
_BREAKS = {tag: 2 for tag in _CLOSES_P | {"table", "caption", "body"}} | {
    tag: 1 for tag in ("li", "dt", "dd", "tr", "option")
}
_PRE = _names("pre listing")
_SPACES = re.compile(r"[ \t\n\r\f]+")
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})[ \t\n\r\f]?|\\(.)", re.S)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)
_HIDDEN_STYLE = re.compile(
    r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse))\s*(?:!|;|$)"
)


def visible_text(document: str, max_chars: int, too_much: str) -> str:
    """The visible text of ``document``; ``InvalidRequest(too_much)`` past ``max_chars``."""
    parser = _Visible(max_chars, too_much)
    for start in range(0, len(document), _FEED):
        parser.feed(document[start : start + _FEED])
        if len(parser.rawdata) > _MAX_PENDING:
            raise InvalidRequest(
                f"malformed HTML: an unterminated tag, comment or {parser.cdata_elem or 'element'}"
                f" longer than {_MAX_PENDING:,} characters"
            )
    if len(parser.rawdata) <= _CLOSE_PENDING and not _OPEN_MARKUP.match(parser.rawdata):
        parser.close()
    return "" if parser.all_hidden else "".join(parser.parts).rstrip()


def _hidden(attrs: list[tuple[str, str | None]]) -> bool:
    first: dict[str, str | None] = {}
    for name, value in attrs:  # a browser keeps the first of repeated attributes
        first.setdefault(name, value)
    if "hidden" in first:
        return True
    style = first.get("style") or ""
    style = _CSS_ESCAPE.sub(lambda m: m[2] or chr(min(int(m[1], 16), 0x10FFFF) or 0xFFFD), style)
    return bool(_HIDDEN_STYLE.search(_CSS_COMMENT.sub("", style).lower()))


class _Visible(HTMLParser):
    def __init__(self, max_chars: int, too_much: str) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._open: list[tuple[str, bool, bool]] = []  # (tag, hides, its content is SVG/MathML)
        self._reopened: list[str] = []  # hidden formatting elements a browser would reopen
        self._hiding = 0  # hidden elements open, and reopened
        self._pre = 0
        self.all_hidden = False  # a hidden <body> or <html>, even a late one, hides the page
        self._newlines = 0  # due before the next text
        self._chars = 0
        self._max_chars, self._too_much = max_chars, too_much

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # `<div/>` opens a div in HTML: the slash counts only on void and foreign elements.
        foreign = self._in_foreign() and tag not in _BREAKOUT
        self._start(tag, attrs)
        if foreign and tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            if tag == "br":  # `</br>` is a `<br>`
                self._break(1, add=True)
            return
        if tag in _NEVER_CLOSED:
            return
        scope = _TABLE_SCOPE if tag in _TABLE_PARTS else _SCOPE | _EXTRA_SCOPE.get(tag, frozenset())
        for depth in range(len(self._open) - 1, -1, -1):
            name = self._open[depth][0]
            if name == tag:
                break
            if name in (scope if tag in _SPECIAL else _SPECIAL):
                return  # a browser ignores this end tag here
        else:
            if tag in self._reopened:  # the end tag that closes it for good
                del self._reopened[len(self._reopened) - 1 - self._reopened[::-1].index(tag)]
                self._hiding -= 1
            return
        while len(self._open) > depth:
            self._pop(closed_by_own_tag=len(self._open) == depth + 1)
        self._break(_BREAKS.get(tag, 0))

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1][0] == "head" and data.strip():
            self._pop(closed_by_own_tag=True)  # text ends the head, as in a browser
        if self._hiding:
            return
        if not self._pre:
            data = _SPACES.sub(" ", data)
        if self._newlines or not self.parts:
            data = data.lstrip("\n") if self._pre else data.lstrip(" ")
            if not data:
                return
            if self.parts:
                self.parts[-1] = self.parts[-1].rstrip(" \n")
                self.parts.append("\n" * self._newlines)
            self._newlines = 0
        elif data.startswith(" ") and self.parts[-1].endswith(" ") and not self._pre:
            data = data[1:]
        self._chars += len(data)
        if self._chars > self._max_chars:
            raise InvalidRequest(self._too_much)
        self.parts.append(data)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("body", "html") and _hidden(attrs):
            self.all_hidden = True
        if tag in _BREAKOUT:  # an HTML element ends SVG and MathML content
            while self._in_foreign():
                self._pop(closed_by_own_tag=False)
        if tag in _VOID:
            if tag in ("br", "hr"):
                self._break(2 if tag == "hr" else 1, add=tag == "br")
            return
        self._implied_end(tag)
        if len(self._open) >= _MAX_DEPTH:
            raise InvalidRequest(f"HTML nested more than {_MAX_DEPTH:,} elements deep")
        hides = (
            tag in _HIDES
            or _hidden(attrs)
            or (tag == "dialog" and all(name != "open" for name, _ in attrs))
        )
        foreign = self._in_foreign()
        self._open.append(
            (tag, hides, tag in ("svg", "math") or (foreign and tag not in _INTEGRATION))
        )
        self._hiding += hides
        self._pre += tag in _PRE
        if tag in _RAW_TEXT and not foreign:
            self.set_cdata_mode(tag)
        if tag in ("td", "th"):
            self.handle_data(" ")  # cells of a row apart
        self._break(_BREAKS.get(tag, 0))

    def _implied_end(self, tag: str) -> None:
        """Close what a browser closes before this start tag (only where it surely does)."""
        top = self._open[-1][0] if self._open else ""
        if (
            (top == "head" and tag not in _HEAD_CONTENT)
            or (top == "p" and tag in _CLOSES_P)
            or (top == tag and tag in ("li", "tr", "option"))
            or (top in ("dt", "dd") and tag in ("dt", "dd"))
            or (top in ("td", "th") and tag in ("td", "th", "tr"))
        ):
            self._pop(closed_by_own_tag=True)
            if tag == "tr" and top in ("td", "th") and self._open and self._open[-1][0] == "tr":
                self._pop(closed_by_own_tag=True)

    def _in_foreign(self) -> bool:
        return bool(self._open) and self._open[-1][2]

    def _pop(self, *, closed_by_own_tag: bool) -> None:
        tag, hides, _ = self._open.pop()
        self._pre -= tag in _PRE
        if hides and tag in _FORMATTING and not closed_by_own_tag:
            self._reopened.append(tag)  # still hiding: a browser reopens it around later text
        else:
            self._hiding -= hides

    def _break(self, newlines: int, *, add: bool = False) -> None:
        """``newlines`` (at most 2) before the next text; ``add`` them for a ``<br>``."""
        total = self._newlines + newlines if add else max(self._newlines, newlines)
        self._newlines = min(total, 2)
