"""Deterministic checks on what a stage's model returned, run after it parses and before
anything is written: junk fails its unit with a clear reason, its raw text kept.

Each rule is small and named. A stage lists the texts of its output (`Text`: a concept, a
subject's level, a question, an answer...), each with its kind, the name of the node it
sits under, the group whose names must differ and the list item it belongs to; `check`
runs every rule over them. A reply that is junk as a whole (a question, an answer, a reply
cut off) fails its unit as "rejected by <rule>: <what was wrong>". A list with junk in it
is not junk as a whole: the items that break a rule are left out, the rest is kept while it
still holds (a session keeps three concepts), and the unit records each item left out in
the same form. The rule's name is what each starts with, so a report counts them by rule
(`rule_of`).

A subject that does not belong where it was proposed ("Biology" under Algebra) is not one
of these: no rule can tell it from a cross-disciplinary subject that does belong
("Chemistry" for Medicine, "Physics" for Mechanical Engineering) without knowing the
subjects. It is the judge's `on_topic` score (generators/stages/judge.py).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from graph.model import name_key

#: kinds of text that name a node (a taxonomy entry, a subject, a subtopic, a session, a
#: concept): short, with no markup at all
NAME_KINDS = frozenset({"node", "subject", "subtopic", "session", "concept"})
#: letters a text of each kind needs at least (a level names a stage of study in words)
MIN_LETTERS = {**dict.fromkeys(NAME_KINDS, 1), "level": 2}
#: words a text of each kind needs at least
MIN_WORDS = {"question": 3, "rationale": 3}
#: letters or digits an answer needs at least ("42" is an answer, "4." is not one we keep)
MIN_ANSWER_CHARS = 2
#: kinds that may be empty (optional in their schema): checked only when given
OPTIONAL_KINDS = frozenset({"description", "level"})

#: a different script is told only from this many letters of it, and this share
SCRIPT_MIN_LETTERS = 20
SCRIPT_MIN_SHARE = 0.3
#: in one name: this many letters, most of them in a script the prompt does not use
NAME_SCRIPT_MIN_LETTERS = 3
#: a script counts as the prompt's from this many letters of it (or this share of them)
PROMPT_SCRIPT_LETTERS = 3
PROMPT_SCRIPT_SHARE = 0.05

_SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>")
_NAME_MARKUP = re.compile(r"\{\{|\}\}|\{%|%\}|<\||\|>")
# in long text (questions, answers), where LaTeX closes two groups with "}}": only what
# reads as a template placeholder or tag, outside code
_PLACEHOLDER = re.compile(r"\{\{\s*[#/^&>]?\s*[A-Za-z_][\w.\-]*\s*\}\}|\{%.*?%\}", re.DOTALL)
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
_WORD = re.compile(r"[^\W_]+")

#: the first word of a letter's Unicode name that names a script worth telling apart
_SCRIPTS = frozenset(
    {
        "LATIN",
        "CYRILLIC",
        "GREEK",
        "ARMENIAN",
        "HEBREW",
        "ARABIC",
        "SYRIAC",
        "THAANA",
        "DEVANAGARI",
        "BENGALI",
        "GURMUKHI",
        "GUJARATI",
        "ORIYA",
        "TAMIL",
        "TELUGU",
        "KANNADA",
        "MALAYALAM",
        "SINHALA",
        "THAI",
        "LAO",
        "TIBETAN",
        "MYANMAR",
        "GEORGIAN",
        "HANGUL",
        "ETHIOPIC",
        "CHEROKEE",
        "KHMER",
        "MONGOLIAN",
        "CJK",
        "HIRAGANA",
        "KATAKANA",
    }
)
#: Chinese and Japanese share their ideographs: one script here
_SAME_SCRIPT = {"HIRAGANA": "CJK", "KATAKANA": "CJK"}


@dataclass(frozen=True)
class Text:
    """One text of an output, as a rule sees it."""

    kind: str  # node | subject | subtopic | session | concept | level | description |
    #            question | answer | rationale
    value: str
    #: the name of the node it sits under, for a name (a concept's session, a subject's
    #: discipline)
    parent: str | None = None
    #: names in one group must differ (the subjects of one reply, the concepts of a session)
    group: str | None = None
    #: where the list item it belongs to sits in the reply, as a pydantic location
    #: (("sessions", 2, "concepts", 0)): a text that breaks a rule leaves that item out and
    #: the rest is kept. None: a text of the reply as a whole (a question, an answer), which
    #: fails the unit
    item: tuple[str | int, ...] | None = None

    def label(self) -> str:
        shown = self.value if len(self.value) <= 80 else self.value[:77] + "..."
        return f"{self.kind} {json.dumps(shown, ensure_ascii=False)}"


@dataclass(frozen=True)
class Output:
    """What the rules look at: a reply's texts, the prompt it answered (for its script) and
    why the model stopped."""

    texts: Sequence[Text]
    prompt: str = ""
    finish_reason: str | None = None
    #: the reply is free text (an answer) rather than JSON
    free_text: bool = False


#: what a rule finds: why, and the text at fault (None: the reply as a whole)
Problem = tuple[str, Text | None]


@dataclass(frozen=True)
class Rule:
    name: str
    #: what it rejects, in one line (the README lists these)
    reason: str
    check: Callable[[Output], Iterator[Problem]]


@dataclass(frozen=True)
class Finding:
    """A rule broken: the item to leave out for it, or (item None) the whole reply."""

    rule: str
    detail: str
    item: tuple[str | int, ...] | None = None

    def __str__(self) -> str:
        return rejection(self.rule, self.detail)


#: the ASCII letters, deleted from an ASCII text's bytes to count them
_ASCII_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))


_ASCII_ALNUM = _ASCII_LETTERS + bytes(range(ord("0"), ord("9") + 1))


def _ascii_letters(text: str, letters: bytes = _ASCII_LETTERS) -> int:
    """The letters (or other `letters`) of an ASCII text, counted in C: a prompt is checked
    on every reply, and one character at a time it costs milliseconds."""
    data = text.encode("ascii")
    return len(data) - len(data.translate(None, letters))


def _letters(text: str) -> int:
    if text.isascii():
        return _ascii_letters(text)
    return sum(ch.isalpha() for ch in text)


def _alnum(text: str) -> int:
    if text.isascii():
        return _ascii_letters(text, _ASCII_ALNUM)
    return sum(ch.isalnum() for ch in text)


def _words(text: str) -> int:
    """Words, counting each ideograph as one (CJK text has no spaces)."""
    cjk = 0 if text.isascii() else sum(script_of(ch) == "CJK" for ch in text)
    return max(len(_WORD.findall(text)), cjk)


def script_of(ch: str) -> str | None:
    """The script of a letter (LATIN, CYRILLIC, CJK...), or None for anything else
    (digits, punctuation, symbols, mathematical letters)."""
    if not ch.isalpha():
        return None
    try:
        words = unicodedata.name(ch).split()
    except ValueError:
        return None
    first = words[1] if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1 else words[0]
    first = _SAME_SCRIPT.get(first, first)
    return first if first in _SCRIPTS else None


def scripts(text: str) -> dict[str, int]:
    """Letters of each script in a text."""
    if text.isascii():  # every ASCII letter is Latin
        n = _ascii_letters(text)
        return {"LATIN": n} if n else {}
    found: dict[str, int] = {}
    for ch in text:
        s = script_of(ch)
        if s is not None:
            found[s] = found.get(s, 0) + 1
    return found


def _prompt_scripts(prompt: str) -> set[str]:
    counted = scripts(prompt)
    total = sum(counted.values())
    return {
        s
        for s, n in counted.items()
        if n >= PROMPT_SCRIPT_LETTERS or (total and n / total >= PROMPT_SCRIPT_SHARE)
    }


def _without_code(text: str) -> str:
    return _CODE.sub(" ", text)


# ---------------------------------------------------------------------------- the rules


def _truncated(out: Output) -> Iterator[Problem]:
    if out.free_text and out.finish_reason == "length":
        yield (
            'the answer stopped at the token limit (finish_reason "length"), cut off; '
            "raise GLAN_MAX_TOKENS or leave it unset",
            None,
        )
        return
    for t in out.texts:
        if t.kind == "answer" and _json_fragment(t.value):
            yield f"the answer is JSON cut off before it ends: {t.label()}", t


def _json_fragment(text: str) -> bool:
    """Whether a text is the start of a JSON value that stops before its end (a reply cut
    off mid-object, as `{"truncated": `)."""
    text = text.strip()
    if not text.startswith(("{", "[")):
        return False
    try:
        json.JSONDecoder(strict=False).raw_decode(text)
    except json.JSONDecodeError as exc:
        return exc.msg.startswith("Unterminated string") or not exc.doc[exc.pos :].strip()
    return False


def _template_leak(out: Output) -> Iterator[Problem]:
    for t in out.texts:
        if t.kind in NAME_KINDS or t.kind == "level":
            found = _NAME_MARKUP.search(t.value)
        else:
            found = _SPECIAL_TOKEN.search(t.value) or _PLACEHOLDER.search(_without_code(t.value))
        if found:
            yield f"{t.label()} holds template or chat markup {found.group(0)!r}", t


def _punctuation_only(out: Output) -> Iterator[Problem]:
    for t in out.texts:
        if t.kind in OPTIONAL_KINDS and not t.value.strip():
            continue
        if not _alnum(t.value):
            yield f"{t.label()} has no letter or digit, only punctuation or spaces", t


def _too_short(out: Output) -> Iterator[Problem]:
    for t in out.texts:
        if t.kind in OPTIONAL_KINDS and not t.value.strip():
            continue
        if t.kind in MIN_LETTERS and _letters(t.value) < MIN_LETTERS[t.kind]:
            need = MIN_LETTERS[t.kind]
            yield f"{t.label()} has fewer than {need} letter{'s' * (need > 1)}", t
        elif t.kind in MIN_WORDS and _words(t.value) < MIN_WORDS[t.kind]:
            yield f"{t.label()} has fewer than {MIN_WORDS[t.kind]} words", t
        elif t.kind == "answer" and _alnum(t.value) < MIN_ANSWER_CHARS:
            yield f"{t.label()} is too short to be an answer", t


def _repeats_parent(out: Output) -> Iterator[Problem]:
    for t in out.texts:
        if t.kind in NAME_KINDS and t.parent and name_key(t.value) == name_key(t.parent):
            yield f"{t.label()} only repeats the name of the node it sits under", t


def _duplicate_names(out: Output) -> Iterator[Problem]:
    seen: set[tuple[str, str]] = set()
    for t in out.texts:
        if t.group is None or t.kind not in NAME_KINDS:
            continue
        key = (t.group, name_key(t.value))
        if key in seen:  # the first is kept
            yield f"{t.label()} is given twice in one list", t
        seen.add(key)


def _wrong_script(out: Output) -> Iterator[Problem]:
    asked = _prompt_scripts(out.prompt)
    if not asked:
        return  # nothing to compare with: the prompt has no letters of a known script
    total: dict[str, int] = {}
    for t in out.texts:
        found = scripts(t.value)
        for s, n in found.items():
            total[s] = total.get(s, 0) + n
        if t.kind in NAME_KINDS:
            foreign = sum(n for s, n in found.items() if s not in asked)
            letters = sum(found.values())
            if foreign >= NAME_SCRIPT_MIN_LETTERS and foreign * 2 > letters:
                yield (
                    f"{t.label()} is written in {_names(found, asked)}, a script the prompt "
                    f"does not use ({_names({s: 1 for s in asked}, set())})",
                    t,
                )
    letters = sum(total.values())
    foreign = sum(n for s, n in total.items() if s not in asked)
    if foreign >= SCRIPT_MIN_LETTERS and foreign >= SCRIPT_MIN_SHARE * letters:
        yield (
            f"{foreign:,} of its {letters:,} letters are in {_names(total, asked)}, a script "
            f"the prompt does not use ({_names({s: 1 for s in asked}, set())})",
            None,
        )


def _names(found: Mapping[str, int], but: set[str]) -> str:
    return ", ".join(s.lower() for s in sorted(found) if s not in but)


RULES: tuple[Rule, ...] = (
    Rule(
        "truncated",
        "an answer cut off by the token limit (finish_reason length), or that is JSON "
        "stopping mid-value",
        _truncated,
    ),
    Rule(
        "template_leak",
        "template or chat markup: {{ or }} or {% in a name, a {{ placeholder }} outside "
        "code in longer text, <|special tokens|> anywhere",
        _template_leak,
    ),
    Rule("punctuation_only", "a text with no letter or digit (`...`, `,`)", _punctuation_only),
    Rule(
        "too_short",
        "a name without a letter, a level without two, a question or judge's rationale under "
        "three words, an answer under two letters or digits",
        _too_short,
    ),
    Rule(
        "repeats_parent",
        "a name that repeats the node it sits under (a concept named as its session)",
        _repeats_parent,
    ),
    Rule(
        "duplicate_names",
        "the same name twice in one list (subjects of a reply, concepts of a session)",
        _duplicate_names,
    ),
    Rule(
        "wrong_script",
        "text in a script the prompt does not use (most of a name, or 20+ letters and 30% "
        "of a reply)",
        _wrong_script,
    ),
)
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
PREFIX = "rejected by "


def rejection(rule: str, detail: str) -> str:
    """The error a unit is failed with: parseable by `rule_of`."""
    return f"{PREFIX}{rule}: {detail}"


def rule_of(error: str | None) -> str | None:
    """The rule that rejected a unit, from its stored error; None for other failures."""
    if not error or not error.startswith(PREFIX):
        return None
    name = error[len(PREFIX) :].split(":", 1)[0]
    return name if name in RULE_NAMES else None


def findings(out: Output, rules: Iterable[Rule] = RULES) -> list[Finding]:
    """Every rule the output breaks, rule by rule in order, each with the item to leave out
    for it (None: the reply as a whole); a text is named by the first rule it breaks."""
    found: list[Finding] = []
    named: set[int] = set()
    for rule in rules:
        for detail, text in rule.check(out):
            if text is not None and id(text) in named:
                continue
            if text is not None:
                named.add(id(text))
            found.append(Finding(rule.name, detail, text.item if text is not None else None))
    return found


def validate(out: Output, rules: Iterable[Rule] = RULES) -> str | None:
    """The first rule the output breaks, as an error ("rejected by <rule>: ..."); None if
    it breaks none."""
    found = findings(out, rules)
    return str(found[0]) if found else None


@dataclass
class Verdict:
    """What the validators make of a parsed reply: the value to keep (its junk items left
    out), or the error that fails its unit; and the items left out, as rejections."""

    value: Any
    error: str | None = None
    dropped: list[str] = field(default_factory=list)


def check(
    value: BaseModel | None,
    texts: Sequence[Text],
    *,
    prompt: str = "",
    finish_reason: str | None = None,
    free_text: bool = False,
    parse_error: str | None = None,
) -> Verdict:
    """A parsed reply (`value`, None with `parse_error` when it did not parse) judged by the
    rules. A reply cut off before its JSON ended is `truncated`. A rule broken by the reply
    as a whole fails it; one broken by a list item (a subject, a subtopic, a session, a
    concept) leaves that item out and keeps the rest, so long as what is left still holds
    (a session with three concepts, a reply with one subject...): an item left too small
    is left out in turn, and a reply left with too little fails with the first rejection."""
    if parse_error is not None or value is None:
        if finish_reason == "length":
            return Verdict(
                None,
                rejection(
                    "truncated",
                    'the reply stopped at the token limit (finish_reason "length") before '
                    f"its JSON ended; raise GLAN_MAX_TOKENS or leave it unset ({parse_error})",
                ),
            )
        return Verdict(None, parse_error or "the reply could not be read")
    found = findings(Output(texts, prompt, finish_reason, free_text))
    whole = next((f for f in found if f.item is None), None)
    if whole is not None:
        return Verdict(None, str(whole))
    if not found:
        return Verdict(value)
    kept, problem = prune(value, [f.item for f in found if f.item is not None])
    if kept is None:
        return Verdict(None, f"{found[0]}; left out, too little is left ({problem})")
    return Verdict(kept, dropped=[str(f) for f in found])


def prune(
    value: BaseModel, items: Sequence[tuple[str | int, ...]]
) -> tuple[BaseModel | None, str | None]:
    """The value without the list items at these locations, validated again: an item then
    too small (a session under three concepts) is left out too, up to the reply itself,
    which then cannot be kept (None, and why)."""
    data = value.model_dump()
    drop = set(items)
    for _ in range(8):  # each pass goes one level up: replies nest a few levels at most
        data = _without(data, drop)
        try:
            return type(value).model_validate(data), None
        except ValidationError as exc:
            up = {_item_of(tuple(e["loc"])) for e in exc.errors()}
            if None in up:
                return None, _first_error(exc)
            drop = {u for u in up if u is not None}
    return None, "it kept breaking its schema"


def _item_of(loc: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The list item a validation error's location lies in (the last index on the way)."""
    last = max((i for i, part in enumerate(loc) if isinstance(part, int)), default=None)
    return None if last is None else loc[: last + 1]


def _without(data: Any, items: set[tuple[str | int, ...]]) -> Any:
    """A copy of `data` without the list elements at `items`."""

    def walk(node: Any, at: tuple[str | int, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*at, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*at, i)) for i, v in enumerate(node) if (*at, i) not in items]
        return node

    return walk(data, ())


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'reply'}: {e['msg']}"


def prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The text a request asked, up to its first answer (a corrected request carries the
    rejected answer after that, which is not the prompt's)."""
    asked: list[str] = []
    for m in messages:
        if m.get("role") == "assistant":
            break
        asked.append(str(m.get("content") or ""))
    return "\n".join(asked)
