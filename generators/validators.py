"""Deterministic checks on what a stage's model returned, run after it parses and before
anything is written: junk fails its unit with a clear reason, its raw text kept.

Each rule is small and named. A stage lists the texts of its output (`Text`: a concept, a
subject's level, a question, an answer...), each with its kind, the name of the node it
sits under and the group whose names must differ; `check` runs every rule in order over
them and gives the first problem as "rejected by <rule>: <what was wrong>". The rule's name
is what the stored error starts with, so a report counts rejections by rule (`rule_of`).

A subject that does not belong where it was proposed ("Biology" under Algebra) is not one
of these: no rule can tell it from a cross-disciplinary subject that does belong
("Chemistry" for Medicine, "Physics" for Mechanical Engineering) without knowing the
subjects. It is the judge's `on_topic` score (generators/stages/judge.py).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Rule:
    name: str
    #: what it rejects, in one line (the README lists these)
    reason: str
    check: Callable[[Output], str | None]


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


def _truncated(out: Output) -> str | None:
    if out.free_text and out.finish_reason == "length":
        return (
            'the answer stopped at the token limit (finish_reason "length"), cut off; '
            "raise GLAN_MAX_TOKENS or leave it unset"
        )
    for t in out.texts:
        if t.kind == "answer" and _json_fragment(t.value):
            return f"the answer is JSON cut off before it ends: {t.label()}"
    return None


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


def _template_leak(out: Output) -> str | None:
    for t in out.texts:
        if t.kind in NAME_KINDS or t.kind == "level":
            found = _NAME_MARKUP.search(t.value)
        else:
            found = _SPECIAL_TOKEN.search(t.value) or _PLACEHOLDER.search(_without_code(t.value))
        if found:
            return f"{t.label()} holds template or chat markup {found.group(0)!r}"
    return None


def _punctuation_only(out: Output) -> str | None:
    for t in out.texts:
        if t.kind in OPTIONAL_KINDS and not t.value.strip():
            continue
        if not _alnum(t.value):
            return f"{t.label()} has no letter or digit, only punctuation or spaces"
    return None


def _too_short(out: Output) -> str | None:
    for t in out.texts:
        if t.kind in OPTIONAL_KINDS and not t.value.strip():
            continue
        if t.kind in MIN_LETTERS and _letters(t.value) < MIN_LETTERS[t.kind]:
            need = MIN_LETTERS[t.kind]
            return f"{t.label()} has fewer than {need} letter{'s' * (need > 1)}"
        if t.kind in MIN_WORDS and _words(t.value) < MIN_WORDS[t.kind]:
            return f"{t.label()} has fewer than {MIN_WORDS[t.kind]} words"
        if t.kind == "answer" and _alnum(t.value) < MIN_ANSWER_CHARS:
            return f"{t.label()} is too short to be an answer"
    return None


def _repeats_parent(out: Output) -> str | None:
    for t in out.texts:
        if t.kind in NAME_KINDS and t.parent and name_key(t.value) == name_key(t.parent):
            return f"{t.label()} only repeats the name of the node it sits under"
    return None


def _duplicate_names(out: Output) -> str | None:
    seen: dict[tuple[str, str], Text] = {}
    for t in out.texts:
        if t.group is None or t.kind not in NAME_KINDS:
            continue
        key = (t.group, name_key(t.value))
        if key in seen:
            return f"{t.label()} is given twice in one list"
        seen[key] = t
    return None


def _wrong_script(out: Output) -> str | None:
    asked = _prompt_scripts(out.prompt)
    if not asked:
        return None  # nothing to compare with: the prompt has no letters of a known script
    total: dict[str, int] = {}
    for t in out.texts:
        found = scripts(t.value)
        for s, n in found.items():
            total[s] = total.get(s, 0) + n
        if t.kind in NAME_KINDS:
            foreign = sum(n for s, n in found.items() if s not in asked)
            letters = sum(found.values())
            if foreign >= NAME_SCRIPT_MIN_LETTERS and foreign * 2 > letters:
                return (
                    f"{t.label()} is written in {_names(found, asked)}, a script the prompt "
                    f"does not use ({_names({s: 1 for s in asked}, set())})"
                )
    letters = sum(total.values())
    foreign = sum(n for s, n in total.items() if s not in asked)
    if foreign >= SCRIPT_MIN_LETTERS and foreign >= SCRIPT_MIN_SHARE * letters:
        return (
            f"{foreign:,} of its {letters:,} letters are in {_names(total, asked)}, a script "
            f"the prompt does not use ({_names({s: 1 for s in asked}, set())})"
        )
    return None


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


def validate(out: Output, rules: Iterable[Rule] = RULES) -> str | None:
    """The first rule the output breaks, as the error to fail its unit with; None if clean."""
    for rule in rules:
        problem = rule.check(out)
        if problem is not None:
            return rejection(rule.name, problem)
    return None


def check(
    texts: Sequence[Text],
    *,
    prompt: str = "",
    finish_reason: str | None = None,
    free_text: bool = False,
    parse_error: str | None = None,
) -> str | None:
    """A reply's error after parsing (`parse_error`, None when it parsed) and validation:
    a reply that did not parse because it was cut off says so as `truncated`."""
    if parse_error is not None:
        if finish_reason == "length":
            return rejection(
                "truncated",
                'the reply stopped at the token limit (finish_reason "length") before its '
                f"JSON ended; raise GLAN_MAX_TOKENS or leave it unset ({parse_error})",
            )
        return parse_error
    return validate(Output(texts, prompt, finish_reason, free_text))


def prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The text a request asked, up to its first answer (a corrected request carries the
    rejected answer after that, which is not the prompt's)."""
    asked: list[str] = []
    for m in messages:
        if m.get("role") == "assistant":
            break
        asked.append(str(m.get("content") or ""))
    return "\n".join(asked)
