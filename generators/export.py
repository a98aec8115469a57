"""Training sets out of the store: instruction/response pairs with their provenance, and
the follow-up turns that go on from a pair, as one multi-turn conversation.

Pairs stream from the database a chunk of instructions at a time, so memory stays flat
whatever the size. Only approved subtrees are read; duplicates and contaminated pairs are
skipped. A train/test split is by subject, so no subject is in both.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from graph.errors import InvalidInput
from graph.model import TURN, stable_hash
from graph.records import InstructionDetail, Node
from graph.store import Store

from .reading import CHUNK, iter_details

Format = Literal["chat", "sharegpt", "alpaca"]
FORMATS: tuple[str, ...] = ("chat", "sharegpt", "alpaca")


@dataclass
class Pair:
    instruction: Node
    response: Node
    subject: Node
    disciplines: list[str]
    sessions: list[str]
    concepts: list[str]
    #: the answered follow-up turns that go on from the pair, in order (see conversation)
    turns: list[Node] = field(default_factory=list)
    #: the names of the concepts those turns added
    turn_concepts: list[str] = field(default_factory=list)

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
            # the judge's overall score (1-10) and who gave it; null and "" when not judged
            "score": r.get("score"),
            "judge_model": r.get("judge_model") or "",
            "judge_prompt": (
                f"{r.get('judge_prompt_name')}@{r.get('judge_prompt_version')}"
                if r.get("judge_model")
                else ""
            ),
            "followup_kinds": [str(t.props.get("kind") or "") for t in self.turns],
            "followup_concepts": self.turn_concepts,
            "followup_model": str(self.turns[0].props.get("model") or "") if self.turns else "",
        }

    def exchanges(self) -> list[tuple[str, str]]:
        """(question, answer) of the pair, then of each follow-up turn, in order."""
        first = (self.instruction.props["text"], self.response.props["text"])
        return [first, *((t.props["text"], t.props["answer"]) for t in self.turns)]

    def record(self, fmt: str) -> dict[str, Any]:
        """The record in a format: chat (`messages`) and sharegpt (`conversations`) hold
        the whole conversation, user and assistant in turn; alpaca, one exchange, holds
        the pair alone."""
        exchanges = self.exchanges()
        if fmt == "chat":
            body: dict[str, Any] = {
                "messages": [
                    {"role": role, "content": text}
                    for q, a in exchanges
                    for role, text in (("user", q), ("assistant", a))
                ]
            }
        elif fmt == "sharegpt":
            body = {
                "conversations": [
                    {"from": who, "value": text}
                    for q, a in exchanges
                    for who, text in (("human", q), ("gpt", a))
                ]
            }
        elif fmt == "alpaca":
            question, answer = exchanges[0]
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
    #: with a minimum score: questions whose answers the judge scored below it, or did not
    #: score at all
    below_score: int = 0
    unjudged: int = 0


@dataclass(frozen=True)
class Keep:
    """What export keeps besides clean pairs, and the judge's score it asks for. By default
    duplicates and contaminated pairs are left out, and scores are not looked at."""

    #: only answers the judge scored this or higher (overall, 1-10): unjudged ones are out
    min_score: float | None = None
    duplicates: bool = False
    contaminated: bool = False


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
    chunk: int = CHUNK,
    keep: Keep | None = None,
) -> Iterator[Pair]:
    """Every exportable pair under an approved path, in a stable order (`iter_details`: the
    order they were written under most of the store, else subject by subject), read a chunk
    of instructions at a time."""
    skipped = skipped if skipped is not None else Skipped()
    conversations = store.nodes.count_kind(TURN) > 0  # else no chunk has a turn to read
    # Every subject met so far, with its paths: a chunk read in the order pairs were written
    # holds most of the store's subjects (a few MB at GLAN scale).
    subjects: dict[str, Node] = {}
    paths: dict[str, list[str]] = {}
    for found in iter_details(store, path, chunk=chunk):
        new = [s for s in dict.fromkeys(s for s, _ in found) if s not in subjects]
        subjects.update(store.nodes.get_many(new))
        paths.update(store.instructions.discipline_paths(new))
        pairs = _pairs(found, subjects, paths, responses, skipped, keep or Keep())
        yield from _with_turns(store, list(pairs)) if conversations else pairs


def _with_turns(store: Store, pairs: list[Pair]) -> list[Pair]:
    """The pairs with the follow-up turns that go on from them (conversation), read for
    all of them at once."""
    found = store.turns.of([p.response.id for p in pairs])
    for pair in pairs:
        pair.turns = conversation(found.get(pair.response.id, []))
    reached = store.turns.reached([t.id for p in pairs for t in p.turns])
    for pair in pairs:
        pair.turn_concepts = [name for t in pair.turns for _, name, _ in reached.get(t.id, [])]
    return pairs


def conversation(turns: Sequence[Node]) -> list[Node]:
    """The follow-ups of one pair that make its conversation: those asked by one model
    (the one whose answered turns go furthest; the first by name on a tie), from the first
    in order, up to the first not answered yet."""
    by_model: dict[str, dict[int, Node]] = {}
    for turn in turns:
        at = int(turn.props.get("position") or 0)
        by_model.setdefault(str(turn.props.get("model") or ""), {})[at] = turn
    best: list[Node] = []
    for model in sorted(by_model):
        chain: list[Node] = []
        while (t := by_model[model].get(len(chain) + 1)) is not None and t.props.get("answer"):
            chain.append(t)
        if len(chain) > len(best):
            best = chain
    return best


def _pairs(
    found: Sequence[tuple[str, InstructionDetail]],
    subjects: dict[str, Node],
    paths: dict[str, list[str]],
    responses: str,
    skipped: Skipped,
    keep: Keep,
) -> Iterator[Pair]:
    for subject_id, detail in found:
        ins = detail.instruction
        if ins.props.get("duplicate") and not keep.duplicates:
            skipped.duplicates += 1
            continue
        if ins.props.get("contaminated") and not keep.contaminated:
            skipped.contaminated += 1
            continue
        clean = [
            r for r in detail.responses if keep.contaminated or not r.props.get("contaminated")
        ]
        if not clean:
            if detail.responses:
                skipped.contaminated += 1
            else:
                skipped.unanswered += 1
            continue
        if keep.min_score is not None:
            scores = [r.props.get("score") for r in clean]
            clean = [r for r, s in zip(clean, scores, strict=True) if (s or 0) >= keep.min_score]
            if not clean:
                if any(s is not None for s in scores):
                    skipped.below_score += 1
                else:
                    skipped.unjudged += 1
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
    keep: Keep | None = None,
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
        for pair in iter_pairs(store, path, responses=responses, skipped=result.skipped, keep=keep):
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
    keep: Keep | None = None,
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
        keep=keep,
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
