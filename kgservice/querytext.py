"""A SPARQL query's text read as Oxigraph's parser reads it, in one linear pass.

:func:`read` splits a query into the grammar's terminals, just far enough to know three things
without running it: whether the keyword ``SERVICE`` could be in it, whether it names its own
dataset (``FROM``/``FROM NAMED``), and how deeply it nests.

Only three kinds of token are opaque, that is, their text is not looked into: string literals,
IRIs and comments. Everything else is *code*: keywords, names, variables, numbers and
punctuation, read as maximal runs of name characters. ``SERVICE`` counts wherever its letters
(in any case) appear inside code, so ``trueSERVICE``, ``1SERVICE`` or ``?s ex:SERVICE`` are
seen however the engine would split them; a name, variable or language tag holding those letters
is refused too (rename it, or write the full IRI). The boundaries of the opaque tokens follow the
grammar exactly, so that nothing the engine reads as code hides inside one:

- strings: ``"…"``, ``'…'`` (no raw line break) and their triple-quoted forms, with the escapes
  ``\\t \\b \\n \\r \\f \\" \\' \\\\`` and ``\\uXXXX``/``\\UXXXXXXXX``; anything else is refused;
- comments: ``#`` outside a string or IRI, up to CR or LF (Oxigraph ends them nowhere else);
  a ``\\#`` in a name is an escape, not a comment;
- IRIs: ``<…>`` without ``<>"{}|^`\\``, controls or spaces. Inside an expression, ``<`` may
  instead be "less than" (``FILTER(?a<1)#>``): the engine reads a comparison where a lexer
  reads an IRI. There, where the previous token ends an operand, the text is read both ways:
  it is checked as code, and refused if it holds ``#``, ``'`` or a bracket, which only the
  comparison reading could open into a comment, string or another nesting.

Oxigraph 0.5 does not decode ``\\u`` escapes before parsing (SPARQL 1.2 dropped that), so
``\\u0053ERVICE`` is no keyword; ``tests/security/test_outbound.py`` checks the engine still
behaves so. Anything the reader cannot place is refused rather than guessed.

>>> read('SELECT ?s FROM <https://w3id.org/esi-kg/graph/ontology> WHERE { ?s ?p "SERVICE" }').has_dataset
True
>>> read('SELECT * WHERE { ?s ?p true' + 'SERVICE <http://x/> { ?a ?b ?c } }').service
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import QueryError

#: Deepest nesting of brackets (``( { [ <<``) or of unary operators (``! - + ^``) a query may
#: have. Oxigraph's recursive parser overflows its stack at a few thousand levels.
MAX_NESTING = 64

_ESCAPE = r"""\\[tbnrf"'\\]|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}"""
#: The grammar's opaque tokens (a string literal, longest opening first; an IRI) and a variable,
#: also what :mod:`kgservice.core.caserules` reads a rule's text with.
STRINGS = _STRINGS = (
    ('"""', re.compile(rf'"""(?:[^"\\]|{_ESCAPE}|"(?!""))*"""')),
    ("'''", re.compile(rf"'''(?:[^'\\]|{_ESCAPE}|'(?!''))*'''")),
    ('"', re.compile(rf'"(?:[^"\\\n\r]|{_ESCAPE})*"')),
    ("'", re.compile(rf"'(?:[^'\\\n\r]|{_ESCAPE})*'")),
)
IRI = _IRI = re.compile(r"<(?:[^<>\"{}|^`\\\x00-\x20]|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8})*>")
_COMMENT_END = re.compile(r"[\r\n]")
# Name characters, broader than the grammar's (a name the engine ends sooner is checked whole
# all the same), with the grammar's \-escapes of a prefixed name's local part.
_NAME_CHARS = r"\w.:%\-\u00b7\u0300-\u036f\u203f\u2040"
_RUN = re.compile(rf"(?:[{_NAME_CHARS}]|\\[^\s])[{_NAME_CHARS}]*+(?:\\[^\s][{_NAME_CHARS}]*+)*+")  # no backtracking
VAR = _VAR = re.compile(r"[?$][\w\u00b7\u0300-\u036f\u203f\u2040]+")
_SERVICE = re.compile("service", re.IGNORECASE)  # Unicode case folding: ſ, K and the like count too
_FROM = re.compile("from", re.IGNORECASE)
_PUNCTUATION = frozenset("{}()[],;|^/!=<>*+-&~?@")
_UNARY = frozenset("!-+^")
#: Keywords after which a term, never an operator, comes: ``<`` after them opens an IRI.
_TERM_KEYWORDS = frozenset(
    "a as base bind by construct describe distinct filter from graph having in minus named not optional "
    "prefix reduced select service silent union values where".split())


@dataclass
class Reading:
    """What :func:`read` found: a ``SERVICE`` keyword, a dataset clause, the deepest nesting."""

    service: bool = False
    has_dataset: bool = False
    depth: int = 0


class _Reader:
    def __init__(self, query: str) -> None:
        self.q = query
        self.out = Reading()
        # Open brackets: "{" (also "[" and "{|"), "data" (a VALUES block), "expr", "list" (a collection
        # or a VALUES row), "tt" (a triple term "<<(") and "<<".
        self.stack: list[str] = []
        self.prev = "start"  # the last code token: "operand", "word", "keyword", "iri", "pname" or punctuation
        self.unary = 0
        self.values = False  # VALUES was read: the next "{" opens a data block

    def refuse(self, at: int, why: str) -> QueryError:
        return QueryError(f"the query cannot be checked at character {at + 1}: {why}; it was not run")

    def code(self, text: str, word: bool = False) -> None:
        if _SERVICE.search(text):
            self.out.service = True
        if word and not self.in_group() and _FROM.search(text):
            self.out.has_dataset = True

    def in_group(self) -> bool:
        return "{" in self.stack or "data" in self.stack

    def push(self, kind: str, at: int) -> None:
        self.stack.append(kind)
        self.out.depth = max(self.out.depth, len(self.stack))
        if len(self.stack) > MAX_NESTING:
            raise QueryError(f"the query nests deeper than {MAX_NESTING} levels (at character {at + 1})")

    def pop(self, kinds: tuple[str, ...]) -> str:
        """Close the innermost bracket. A bracket that closes nothing, or the wrong one, is left to
        the engine's parser, which refuses it with its own message: the reading agrees with the
        engine's on brackets, so the query cannot run."""
        return self.stack.pop() if self.stack and self.stack[-1] in kinds else ""

    def in_expression(self) -> bool:
        return bool(self.stack) and self.stack[-1] == "expr"

    def paren_kind(self) -> str:
        """An expression's parenthesis, or a collection's / VALUES row's (which hold only terms).

        Where it could be either, it is an expression: the reading that checks more."""
        top = self.stack[-1] if self.stack else ""
        if top in ("expr", "list"):
            return top
        if top in ("tt", "data") or (self.in_group() and self.prev in ("{", ".", ";", ",", "[")):
            return "list"
        return "expr"

    def run(self) -> Reading:
        q, n, i = self.q, len(self.q), 0
        while i < n:
            c = q[i]
            if c in " \t\r\n":
                i += 1
                continue
            if c == "#":
                end = _COMMENT_END.search(q, i)
                i = end.start() if end else n
                continue
            kind, i = self.token(i, c)
            if kind in _UNARY:
                self.unary += 1
                if self.unary > MAX_NESTING:
                    raise QueryError(f"the query chains more than {MAX_NESTING} unary operators")
            else:
                self.unary = 0
            self.prev = kind
        return self.out

    def token(self, i: int, c: str) -> tuple[str, int]:
        """Read the code or opaque token at ``i``: (its kind for the next token, where it ends)."""
        q = self.q
        if c in "\"'":
            for opening, pattern in _STRINGS:
                if q.startswith(opening, i):
                    match = pattern.match(q, i)
                    if match is None:
                        raise self.refuse(i, "a string is not closed, or holds an escape SPARQL does not have")
                    return "operand", match.end()
        if c == "<":
            match = _IRI.match(q, i)
            if match is not None:
                if self.in_expression() and self.prev in ("operand", "word", "iri", "pname"):
                    self.comparison_or_iri(match.group()[1:-1], i)
                return "iri", match.end()
            if q.startswith("<<(", i):
                self.push("tt", i)
                return "(", i + 3
            if q.startswith("<<", i):
                self.push("<<", i)
                return "<<", i + 2
            return "<", i + 1
        if c in "?$":
            match = _VAR.match(q, i)
            if match is not None:
                self.code(match.group())
                return "operand", match.end()
        if c == ">" and q.startswith(">>", i) and self.stack and self.stack[-1] == "<<":
            self.stack.pop()
            return "operand", i + 2
        if c in "([{":
            if c == "(":
                self.push(self.paren_kind(), i)
            else:
                self.push("data" if c == "{" and self.values else "{", i)
                self.values = self.values and c != "{"
            return c, i + (2 if q.startswith("{|", i) else 1)
        if c in ")]}" or (c == "|" and q.startswith("|}", i)):
            if c == ")":
                if self.pop(("expr", "list", "tt")) == "tt" and q.startswith(")>>", i):
                    return "operand", i + 3
                return "operand", i + 1
            self.pop(("{", "data"))
            return ("operand" if c == "]" else "}"), i + (2 if c == "|" else 1)
        match = _RUN.match(q, i)
        if match is not None:
            text = match.group()
            if text.strip(".-") == "":
                return text[-1], match.end()
            if ":" in text:
                self.code(text)
                return "pname", match.end()
            self.code(text, word=True)
            if text.isalpha() and text.lower() not in ("true", "false"):
                self.values = self.values or text.lower() == "values"
                return ("keyword" if text.lower() in _TERM_KEYWORDS else "word"), match.end()
            return "operand", match.end()
        if c in _PUNCTUATION:
            return c, i + 1
        raise self.refuse(i, f"{c!r} is not SPARQL here")

    def comparison_or_iri(self, inner: str, at: int) -> None:
        """``<…>`` where ``<`` may be "less than": check the text between as code as well."""
        for ch in "#'()[]":
            if ch in inner:
                raise self.refuse(at, f"'<' may be an IRI or 'less than', and {ch!r} after it would be read "
                                      "differently each way; put spaces around a comparison, or use a prefixed name")
        self.code(inner)


def read(query: str) -> Reading:
    """Read ``query`` once, left to right; raise :class:`QueryError` where it cannot be placed."""
    return _Reader(query).run()
