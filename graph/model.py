"""The GLAN graph model as data: node kinds, relationship types, ids and review states.

Everything that writes Cypher takes its labels and property names from here, never from
user input. Backends render this description into their own DDL (graph/backends/).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property


class PropType(StrEnum):
    STRING = "STRING"
    INT = "INT64"
    FLOAT = "DOUBLE"
    BOOL = "BOOLEAN"
    STRING_LIST = "STRING[]"


class Status(StrEnum):
    """Review state of a taxonomy node. Rejecting a node hides its whole subtree."""

    PROPOSED = "proposed"
    APPROVED = "approved"
    REJECTED = "rejected"


class Source(StrEnum):
    SEED = "seed"
    LLM = "llm"
    USER = "user"


@dataclass(frozen=True)
class Prop:
    name: str
    type: PropType = PropType.STRING


@dataclass(frozen=True)
class NodeKind:
    label: str
    id_prefix: str
    props: tuple[Prop, ...]

    @cached_property
    def prop_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.props)

    def prop(self, name: str) -> Prop:
        for p in self.props:
            if p.name == name:
                return p
        raise KeyError(f"{self.label} has no property {name!r}")

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class RelKind:
    type: str
    src: NodeKind
    dst: NodeKind

    def __str__(self) -> str:
        return self.type


INT, FLOAT, LIST = PropType.INT, PropType.FLOAT, PropType.STRING_LIST

# Properties every node of the hierarchy (Field .. Concept) carries.
_HIERARCHY = (
    Prop("id"),
    Prop("name"),
    Prop("key"),  # normalized name: what paths and merges compare
    Prop("status"),
    Prop("source"),
    Prop("description"),
    Prop("created_at"),
    Prop("updated_at"),
)
# Provenance of anything a model produced.
_PROVENANCE = (
    Prop("model"),
    Prop("prompt_name"),
    Prop("prompt_version"),
    Prop("job_id"),
    Prop("unit_id"),
)

# A pair's judgement (generators/stages/judge.py), kept on its Response: 1-10 on each of the
# rubric's criteria, `score` the overall one, a one-sentence rationale, and which judge model,
# prompt and job gave it. A pair has one current judgement: judged again (another judge
# model), the newer one replaces it; each judging's reply stays on its unit.
SCORE_CRITERIA: tuple[str, ...] = (
    "self_contained",
    "answerable",
    "correct",
    "complete",
    "uses_concepts",
    "on_topic",
)
_JUDGEMENT = (
    Prop("score", INT),
    *(Prop(f"score_{c}", INT) for c in SCORE_CRITERIA),
    Prop("rationale"),
    Prop("judge_model"),
    Prop("judge_prompt_name"),
    Prop("judge_prompt_version"),
    Prop("judge_job_id"),
    Prop("judge_unit_id"),
    Prop("judged_at"),
)

FIELD = NodeKind("Field", "fld", _HIERARCHY + (Prop("path"),) + _PROVENANCE)
SUBFIELD = NodeKind("SubField", "sub", _HIERARCHY + (Prop("path"),) + _PROVENANCE)
DISCIPLINE = NodeKind("Discipline", "dis", _HIERARCHY + (Prop("path"),) + _PROVENANCE)
# What a subject's own subtree holds (visible sessions and concepts, instructions asked from
# them, their responses, covered concepts, distinct combinations), kept on the subject so
# that coverage of a large subtree sums one row per subject instead of walking every
# concept and instruction. Everything below a subject belongs to it alone, so these add up.
# Every write below a subject brings its rollup up to date in the write's own transaction
# and bumps `rollup_dirty`, its write count; the rollup is current when `rollup_clean`
# equals it. One that is not (made by an older glan or a bulk load, or marked stale) is
# recomputed on the next coverage read (see graph/rollups.py).
ROLLUPS: tuple[str, ...] = (
    "rollup_sessions",
    "rollup_concepts",
    "rollup_instructions",
    "rollup_responses",
    "rollup_covered",
    "rollup_combos",
    # the subject's combination space (graph/combinations.py), as hi * 2^31 + lo: sums of
    # them over every subject stay exact int64 in any engine
    "rollup_space_hi",
    "rollup_space_lo",
)
SUBJECT = NodeKind(
    "Subject",
    "sbj",
    _HIERARCHY
    + (Prop("level"), Prop("subtopics", LIST))
    + _PROVENANCE
    + tuple(Prop(name, INT) for name in (*ROLLUPS, "rollup_dirty", "rollup_clean")),
)
SESSION = NodeKind("Session", "ses", _HIERARCHY + (Prop("position", INT),) + _PROVENANCE)
CONCEPT = NodeKind("Concept", "con", _HIERARCHY + (Prop("position", INT),) + _PROVENANCE)
INSTRUCTION = NodeKind(
    "Instruction",
    "ins",
    (
        Prop("id"),
        Prop("text"),
        Prop("strategy"),  # basic | hard
        Prop("seed", INT),
        Prop("combo_key"),  # hash of the sorted concept ids: what "combination covered" counts
        Prop("subject_id"),
        Prop("temperature", FLOAT),
        Prop("top_p", FLOAT),
        Prop("created_at"),
        Prop("duplicate"),  # exact | near, with a DUPLICATE_OF edge to the kept instruction
        Prop("contaminated"),  # the benchmark(s) it overlaps; excluded from export
        Prop("contamination"),  # JSON: each overlap of it or its answers (generators/cleaning)
    )
    + _PROVENANCE,
)
RESPONSE = NodeKind(
    "Response",
    "rsp",
    (
        Prop("id"),
        Prop("text"),
        Prop("instruction_id"),
        Prop("temperature", FLOAT),
        Prop("top_p", FLOAT),
        Prop("created_at"),
        Prop("contaminated"),
    )
    + _PROVENANCE
    + _JUDGEMENT,
)
# One follow-up turn of a conversation that goes on from a question-answer pair (the pair's
# Response, which it CONTINUES): the student's next question, what kind of question it is,
# and its answer once the pair's answer model gave it (null until then). Its id is the
# pair's answer, its position (1 for the first follow-up) and the model that asked it.
TURN = NodeKind(
    "Turn",
    "trn",
    (
        Prop("id"),
        Prop("text"),  # the student's follow-up question
        Prop("kind"),  # clarification | harder | application
        Prop("position", INT),
        Prop("response_id"),  # the pair's answer the conversation goes on from
        Prop("instruction_id"),  # the pair's question
        Prop("subject_id"),
        Prop("temperature", FLOAT),
        Prop("top_p", FLOAT),
        Prop("created_at"),
        Prop("answer"),  # the answer to it, by the model that answered the pair
        Prop("answer_model"),
        Prop("answer_prompt_name"),
        Prop("answer_prompt_version"),
        Prop("answer_job_id"),
        Prop("answer_unit_id"),
        Prop("answered_at"),
    )
    + _PROVENANCE,
)
JOB = NodeKind(
    "Job",
    "job",
    (
        Prop("id"),
        Prop("kind"),
        Prop("scope"),
        Prop("params"),  # JSON text
        Prop("status"),
        Prop("total", INT),
        Prop("done", INT),
        Prop("failed", INT),
        Prop("prompt_tokens", INT),
        Prop("completion_tokens", INT),
        Prop("error"),
        Prop("created_at"),
        Prop("updated_at"),
        Prop("model"),  # the model its last run asked (what its tokens are priced at)
        Prop("max_cost", FLOAT),  # the cost cap in US dollars its last run kept (0: none)
        # live | batch | offline | cluster: what its last run sent requests through
        Prop("executor"),
    ),
)
# One resumable piece of a job (discipline+round, subject, sampled combination, ...).
# Its id is derived from its inputs, so a re-run finds it and skips it when done.
UNIT = NodeKind(
    "Unit",
    "unt",
    (
        Prop("id"),
        Prop("job_id"),
        Prop("stage"),
        Prop("target_id"),
        Prop("status"),  # pending | done | failed
        Prop("attempts", INT),
        Prop("error"),
        Prop("raw"),  # the model's text when parsing failed: never thrown away
        Prop("dropped"),  # what the validators left out of its output, a rejection a line
        Prop("payload"),  # JSON text: the unit's inputs (e.g. the sampled concept ids)
        Prop("prompt_tokens", INT),
        Prop("completion_tokens", INT),
        Prop("updated_at"),
        Prop("batch"),  # the Batch it was last submitted in (the batch executor)
    ),
)
# One batch of a job's requests submitted to a Files + Batches API (generators/batch.py):
# recorded before it is submitted, so a killed process finds it again (by the API's
# metadata, before its remote id is stored) and polls it instead of submitting it again.
BATCH = NodeKind(
    "Batch",
    "bat",
    (
        Prop("id"),
        Prop("job_id"),
        Prop("seq", INT),  # its place among the job's batches, from 0
        Prop("endpoint"),  # the API's base URL
        Prop("status"),  # preparing (not yet known to the API), then the API's status
        Prop("remote_id"),
        Prop("input_file_id"),
        Prop("output_file_id"),
        Prop("error_file_id"),
        Prop("requests", INT),  # lines in its input file
        Prop("completed", INT),  # the API's request counts
        Prop("failed", INT),
        Prop("errors"),  # why the API refused or failed it, as it said
        Prop("imported", INT),  # 1 once its output and error files were read into the store
        Prop("created_at"),
        Prop("updated_at"),
    ),
)

NODE_KINDS: tuple[NodeKind, ...] = (
    FIELD,
    SUBFIELD,
    DISCIPLINE,
    SUBJECT,
    SESSION,
    CONCEPT,
    INSTRUCTION,
    RESPONSE,
    TURN,
    JOB,
    UNIT,
    BATCH,
)
KIND_BY_LABEL = {k.label: k for k in NODE_KINDS}

HAS_SUBFIELD = RelKind("HAS_SUBFIELD", FIELD, SUBFIELD)
HAS_DISCIPLINE = RelKind("HAS_DISCIPLINE", SUBFIELD, DISCIPLINE)
HAS_SUBJECT = RelKind("HAS_SUBJECT", DISCIPLINE, SUBJECT)
HAS_SESSION = RelKind("HAS_SESSION", SUBJECT, SESSION)
HAS_CONCEPT = RelKind("HAS_CONCEPT", SESSION, CONCEPT)
COVERS = RelKind("COVERS", INSTRUCTION, CONCEPT)
FROM = RelKind("FROM", INSTRUCTION, SESSION)
ANSWERS = RelKind("ANSWERS", RESPONSE, INSTRUCTION)
DUPLICATE_OF = RelKind("DUPLICATE_OF", INSTRUCTION, INSTRUCTION)
# a follow-up turn goes on from a pair (its answer), and reaches the concept it adds, if
# any: coverage counts a concept reached in any turn as covered
CONTINUES = RelKind("CONTINUES", TURN, RESPONSE)
REACHES = RelKind("REACHES", TURN, CONCEPT)

REL_KINDS: tuple[RelKind, ...] = (
    HAS_SUBFIELD,
    HAS_DISCIPLINE,
    HAS_SUBJECT,
    HAS_SESSION,
    HAS_CONCEPT,
    COVERS,
    FROM,
    ANSWERS,
    DUPLICATE_OF,
    CONTINUES,
    REACHES,
)

# The knowledge hierarchy, top down. A path "A/B/C" names the node at depth 3: a Discipline.
HIERARCHY: tuple[NodeKind, ...] = (FIELD, SUBFIELD, DISCIPLINE, SUBJECT, SESSION, CONCEPT)
CHILD_REL: dict[str, RelKind] = {r.src.label: r for r in REL_KINDS[:5]}
PARENT_REL: dict[str, RelKind] = {r.dst.label: r for r in REL_KINDS[:5]}
TAXONOMY: tuple[NodeKind, ...] = (FIELD, SUBFIELD, DISCIPLINE)
# Only subjects may sit under several parents (a subject shared by disciplines).
SHARED_KINDS = frozenset({SUBJECT.label})

# Kinds a user may name on the command line or in the API, case-insensitively.
KIND_ALIASES = {
    "field": FIELD,
    "subfield": SUBFIELD,
    "sub-field": SUBFIELD,
    "discipline": DISCIPLINE,
    "subject": SUBJECT,
    "session": SESSION,
    "concept": CONCEPT,
}

#: Limits on what users type: a node's name (and a subject's level or one subtopic), a
#: description, the items of a list, and a whole path (six names and their separators).
MAX_NAME_LENGTH = 200
MAX_TEXT_LENGTH = 10_000
MAX_LIST_ITEMS = 100
MAX_PATH_LENGTH = 6 * (MAX_NAME_LENGTH + 1)
PATH_SEPARATOR = "/"


def parse_kind(name: str) -> NodeKind:
    kind = KIND_ALIASES.get(name.strip().lower()) or KIND_BY_LABEL.get(name.strip())
    if kind is None:
        choices = ", ".join(k.label for k in HIERARCHY)
        raise ValueError(f"unknown kind {name!r}; choose one of {choices}")
    return kind


def depth_of(kind: NodeKind) -> int:
    """1 for Field .. 6 for Concept."""
    return HIERARCHY.index(kind) + 1


def child_kind(kind: NodeKind) -> NodeKind | None:
    rel = CHILD_REL.get(kind.label)
    return rel.dst if rel else None


_WS = re.compile(r"\s+")


def clean_name(name: str) -> str:
    """The name as stored: NFC, trimmed, inner whitespace collapsed, control chars removed."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" or ch in "\t\n ")
    return _WS.sub(" ", name).strip()


def name_key(name: str) -> str:
    """What two names must share to be the same node: case and spacing do not count."""
    return clean_name(name).casefold()


def stable_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def node_id(kind: NodeKind, *parts: str) -> str:
    """A deterministic id: the same inputs always give the same node, so writes are upserts."""
    return f"{kind.id_prefix}_{stable_hash(kind.label, *parts)}"


def hierarchy_id(kind: NodeKind, name: str, parent_id: str | None) -> str:
    """Id of a Field..Concept node. Subjects are keyed by name alone so disciplines share them."""
    if kind is FIELD or kind.label in SHARED_KINDS:
        return node_id(kind, name_key(name))
    if parent_id is None:
        raise ValueError(f"a {kind.label} needs a parent")
    return node_id(kind, parent_id, name_key(name))


def escape_segment(name: str) -> str:
    return name.replace("\\", "\\\\").replace(PATH_SEPARATOR, "\\" + PATH_SEPARATOR)


def join_path(names: list[str] | tuple[str, ...]) -> str:
    return PATH_SEPARATOR.join(escape_segment(n) for n in names)


def split_path(path: str) -> list[str]:
    """Split "Natural Sciences/Physics" into names; "\\/" is a slash inside a name."""
    if len(path) > MAX_PATH_LENGTH:
        raise ValueError(
            f"the path is {len(path):,} characters long; the limit is {MAX_PATH_LENGTH:,}"
        )
    parts: list[str] = []
    buf: list[str] = []
    it = iter(path)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            buf.append(nxt)
        elif ch == PATH_SEPARATOR:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    parts = [clean_name(p) for p in parts]
    if path.strip() == "":
        return []
    if any(not p for p in parts):
        raise ValueError(f"path {path!r} has an empty segment")
    return parts
