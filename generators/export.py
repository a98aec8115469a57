"""Training sets out of the store: instruction/response pairs with their provenance.

Pairs stream from the database a batch of subjects at a time, so memory stays flat
whatever the size. Only approved subtrees are read; duplicates and contaminated pairs are
skipped. A train/test split is by subject, so no subject is in both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from graph.driver import batched
from graph.errors import InvalidInput, WrongKind
from graph.model import CONCEPT, HIERARCHY, SESSION, SUBJECT, stable_hash
from graph.store import InstructionDetail, NameIndex, Node, Store

Format = Literal["chat", "sharegpt", "alpaca"]
FORMATS: tuple[str, ...] = ("chat", "sharegpt", "alpaca")
#: Instructions handled at once: bounds memory whatever the dataset size (about 100 MB of
#: pairs at this size). Large, because a subject too large for a group is read by id, and
#: on the embedded engine each of those reads costs a scan of the tables it joins.
CHUNK = 20_000
#: Subjects whose instruction ids are listed at once (a few hundred thousand ids at most).
SUBJECTS_PER_BATCH = 2000


@dataclass
class Pair:
    instruction: Node
    response: Node
    subject: Node
    disciplines: list[str]
    sessions: list[str]
    concepts: list[str]

    def metadata(self) -> dict[str, Any]:
        i, r = self.instruction.props, self.response.props
        return {
            "instruction_id": self.instruction.id,
            "response_id": self.response.id,
            "disciplines": self.disciplines,
            "subject": self.subject.name,
            "level": self.subject.props.get("level") or "",
            "sessions": self.sessions,
            "concepts": self.concepts,
            "strategy": i.get("strategy") or "",
            "seed": i.get("seed"),
            "question_model": i.get("model") or "",
            "answer_model": r.get("model") or "",
            "question_prompt": f"{i.get('prompt_name')}@{i.get('prompt_version')}",
            "answer_prompt": f"{r.get('prompt_name')}@{r.get('prompt_version')}",
            "job_id": i.get("job_id") or "",
        }

    def record(self, fmt: str) -> dict[str, Any]:
        question = self.instruction.props["text"]
        answer = self.response.props["text"]
        if fmt == "chat":
            body: dict[str, Any] = {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        elif fmt == "sharegpt":
            body = {
                "conversations": [
                    {"from": "human", "value": question},
                    {"from": "gpt", "value": answer},
                ]
            }
        elif fmt == "alpaca":
            body = {"instruction": question, "input": "", "output": answer}
        else:
            raise InvalidInput(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        body["metadata"] = self.metadata()
        return body


@dataclass
class Skipped:
    duplicates: int = 0
    contaminated: int = 0
    unanswered: int = 0


def in_test_split(subject_id: str, fraction: float, seed: int) -> bool:
    """A stable draw per subject: the same subjects go to test for the same seed."""
    if fraction <= 0:
        return False
    return int(stable_hash("split", str(seed), subject_id), 16) / 16**24 < fraction


def iter_pairs(
    store: Store,
    path: str | None,
    *,
    responses: Literal["first", "all"] = "first",
    skipped: Skipped | None = None,
    subjects_per_batch: int = SUBJECTS_PER_BATCH,
    chunk: int = CHUNK,
) -> Iterator[Pair]:
    """Every exportable pair under an approved path, subject by subject, in a stable order.

    Subjects are read a group at a time, a group holding up to `chunk` instructions, each
    group's instructions and their links read walking down from its subjects. A subject
    with more instructions than that is read `chunk` instructions at a time, by id."""
    scope = store.scope(path)
    if scope is not None and scope.level > HIERARCHY.index(SUBJECT):
        raise WrongKind(f"{scope.path!r} is a {scope.kind.label}; export a subject or above")
    skipped = skipped if skipped is not None else Skipped()
    names = _NameIndexes(store)
    for subject_batch in batched(store.ids_in_scope(scope, SUBJECT), subjects_per_batch):
        by_subject = store.instructions_by_subject(subject_batch)
        subjects = store.get_many(subject_batch)
        paths = store.discipline_paths(subject_batch)
        for group in _groups(subject_batch, by_subject, chunk):
            for found in _details(store, group, by_subject, chunk, names):
                yield from _pairs(found, subjects, paths, responses, skipped)


def _details(
    store: Store,
    group: list[str],
    by_subject: Mapping[str, list[str]],
    chunk: int,
    names: _NameIndexes,
) -> Iterator[list[tuple[str, InstructionDetail]]]:
    """A group's instructions with their links, read walking down from its subjects; those
    of one subject larger than a chunk, a chunk at a time by id."""
    if len(group) > 1 or len(by_subject[group[0]]) <= chunk:
        below = store.details_below(group)
        yield [(s, detail) for s in group for detail in below[s]]
        return
    (subject,) = group
    for ids in batched(by_subject[subject], chunk):
        by_id = store.details_of(ids, names.concepts, names.sessions)
        yield [(subject, by_id[i]) for i in ids if i in by_id]


def _groups(
    subject_ids: Sequence[str], by_subject: Mapping[str, list[str]], size: int
) -> Iterator[list[str]]:
    """The subjects with instructions, in order, in groups of up to `size` instructions; a
    subject with more is a group of its own."""
    group: list[str] = []
    held = 0
    for subject in subject_ids:
        n = len(by_subject[subject])
        if not n:
            continue
        if group and held + n > size:
            yield group
            group, held = [], 0
        group.append(subject)
        held += n
    if group:
        yield group


class _NameIndexes:
    """The names of concepts and sessions (Store.name_index), read on first use: only the
    reads by id of large subjects need them, and reading them costs a scan of both tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @cached_property
    def concepts(self) -> NameIndex | None:
        return self.store.name_index(CONCEPT)

    @cached_property
    def sessions(self) -> NameIndex | None:
        return self.store.name_index(SESSION)


def _pairs(
    found: Sequence[tuple[str, InstructionDetail]],
    subjects: dict[str, Node],
    paths: dict[str, list[str]],
    responses: str,
    skipped: Skipped,
) -> Iterator[Pair]:
    for subject_id, detail in found:
        ins = detail.instruction
        if ins.props.get("duplicate"):
            skipped.duplicates += 1
            continue
        if ins.props.get("contaminated"):
            skipped.contaminated += 1
            continue
        clean = [r for r in detail.responses if not r.props.get("contaminated")]
        if not clean:
            if detail.responses:
                skipped.contaminated += 1
            else:
                skipped.unanswered += 1
            continue
        session_names = [name for _, name, _ in sorted(detail.sessions, key=lambda s: (s[2], s[0]))]
        concept_names = sorted(name for _, name, _ in detail.concepts)
        for response in clean if responses == "all" else clean[:1]:
            yield Pair(
                ins,
                response,
                subjects[subject_id],
                paths.get(subject_id, []),
                session_names,
                concept_names,
            )


@dataclass
class ExportResult:
    files: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    skipped: Skipped = field(default_factory=Skipped)


def export_jsonl(
    store: Store,
    path: str | None,
    out: Path,
    *,
    fmt: str = "chat",
    responses: Literal["first", "all"] = "first",
    test_fraction: float = 0.0,
    seed: int = 0,
) -> ExportResult:
    """Write JSONL; with a test fraction, FILE.train.jsonl and FILE.test.jsonl."""
    _check(fmt, test_fraction)
    result = ExportResult()
    targets = {"train": out}
    if test_fraction > 0:
        stem = out.name.removesuffix(".jsonl")
        targets = {s: out.with_name(f"{stem}.{s}.jsonl") for s in ("train", "test")}
    out.parent.mkdir(parents=True, exist_ok=True)
    handles = {s: p.open("w", encoding="utf-8") for s, p in targets.items()}
    try:
        for pair in iter_pairs(store, path, responses=responses, skipped=result.skipped):
            split = "test" if in_test_split(pair.subject.id, test_fraction, seed) else "train"
            handles[split].write(json.dumps(pair.record(fmt), ensure_ascii=False) + "\n")
            result.counts[split] += 1
    finally:
        for h in handles.values():
            h.close()
    result.files = {s: str(p) for s, p in targets.items()}
    return result


def export_hf(
    store: Store,
    path: str | None,
    out_dir: Path,
    *,
    fmt: str = "chat",
    responses: Literal["first", "all"] = "first",
    test_fraction: float = 0.0,
    seed: int = 0,
) -> ExportResult:
    """A `datasets.DatasetDict` saved to disk (load it with `datasets.load_from_disk`).

    Written through JSONL files in the output folder, which the library reads in a
    streaming fashion, so memory stays flat here too.
    """
    import datasets

    staging = out_dir.with_name(out_dir.name + ".staging")
    result = export_jsonl(
        store,
        path,
        staging / "pairs.jsonl",
        fmt=fmt,
        responses=responses,
        test_fraction=test_fraction,
        seed=seed,
    )
    splits = {s: f for s, f in result.files.items() if result.counts[s] > 0}
    if not splits:
        raise InvalidInput(f"nothing to export under {path or 'the store'}: no answered pairs")
    loaded = datasets.load_dataset("json", data_files=splits, cache_dir=str(staging / "cache"))
    loaded.save_to_disk(str(out_dir))
    for f in result.files.values():
        Path(f).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    result.files = {"dataset": str(out_dir)}
    return result


def _check(fmt: str, test_fraction: float) -> None:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= test_fraction < 1.0:
        raise InvalidInput("the test fraction must be at least 0 and below 1")
