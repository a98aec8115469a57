"""The README, and the guides in docs/ it links to, are executed, not just read.

- Its two set-up commands are the ones `.ci/run` runs (the test command verbatim, the llama.cpp
  build flags alike); the main job itself runs in tests/test_e2e.py, taken from here.
- Every ```graphql block is validated against the live schema and executed, in order, on a
  server over the seed taxonomy with a stub model (a generation it starts is waited for,
  as a reader would, before the next block; `job_...` stands for the job just started).
- The shell blocks of "Using it", "Generating" (against the stub) and "Datasets out" run as
  scripts on a fresh store and exit 0; the commands that start the server answer a query.
- Every GLAN_* variable they name is a setting (or one of the test suite's own), and
  every setting is in the README's table.
- The guides' blocks are read with the README's, in the order the README lists them
  (`DOCS`), under their own headings.

So a README or guide edit that breaks an example fails CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import OperationDefinitionNode, OperationType, parse, validate

from server.graphql import schema
from server.settings import Settings
from tests.api_helpers import Api, free_port, subscribe
from tests.llm_stub import Stub

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
#: The README and the guides whose examples run here, in the order their blocks run.
DOCS = [README, *(ROOT / "docs" / name for name in ("api.md", "generation.md"))]
FIELDS = "{ children { ... on TaxonomyNodeConnection { totalCount } } }"
#: Variables the README names for the test suite, not for glan itself.
TEST_VARIABLES = {
    "GLAN_NEO4J_URI",
    "GLAN_MEMGRAPH_URI",
    "GLAN_NEO4J_USER",
    "GLAN_NEO4J_PASSWORD",
    "GLAN_MEMGRAPH_USER",
    "GLAN_MEMGRAPH_PASSWORD",
    "GLAN_RELIABILITY_FULL",
}


@dataclass(frozen=True)
class Block:
    lang: str
    section: str  # the nearest heading above it
    text: str
    line: int
    file: str = "README.md"

    @property
    def where(self) -> str:
        return f"{self.file} line {self.line}"


def readme_blocks() -> list[Block]:
    """The code blocks of the README and its guides, each under its nearest heading."""
    blocks: list[Block] = []
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        section, lang, start, body = "", None, 0, []
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if lang is None:
                if line.startswith("#"):
                    section = line.lstrip("#").strip()
                elif line.startswith("```"):
                    lang, start, body = line[3:].strip(), n, []
            elif line.startswith("```"):
                blocks.append(Block(lang, section, "\n".join(body), start, name))
                lang = None
            else:
                body.append(line)
        assert lang is None, f"{name}: the code block at line {start} is never closed"
    return blocks


def blocks_in(section: str, lang: str) -> list[Block]:
    found = [b for b in readme_blocks() if b.section == section and b.lang == lang]
    assert found, f"neither the README nor a guide has a {lang} block under {section!r}"
    return found


def glan_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The user's environment with glan on PATH, a fresh store, and no GLAN_* of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GLAN_DB_PATH"] = str(tmp_path / "store.lbug")
    return env | extra


def run_script(text: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """A README block as a bash script that stops at the first command that fails."""
    script = cwd / "readme-block.sh"
    script.write_text("set -euo pipefail\n" + text + "\n", encoding="utf-8")
    done = subprocess.run(
        ["bash", "-x", str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"README block failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


# ------------------------------------------------------------------------ set-up commands


def _ci_lines() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]


def test_the_set_up_commands_are_what_ci_runs() -> None:
    blocks = [b.text.strip() for b in blocks_in("Set up", "bash")]
    main = next(b for b in blocks if "glan init" in b)
    tests = next(b for b in blocks if "pytest" in b)
    assert tests == _ci_lines()[-1], "the README's test command must be .ci/run's last line"
    flags = next(re.search(r'CMAKE_ARGS:-(.+?)}"', ln) for ln in _ci_lines() if "CMAKE_ARGS" in ln)
    assert flags is not None
    assert main.startswith(f"CMAKE_ARGS={flags.group(1)} pip install -e '.[local]'"), main
    # the main job, as test_e2e runs it
    assert "glan generate all" in main and "--local" in main
    # right after it, the lines that point glan at a real endpoint
    after = blocks[blocks.index(main) + 1]
    assert "GLAN_LLM_BASE_URL=" in after and "GLAN_MODEL=" in after and "glan generate" in after


def main_job_commands() -> str:
    """The first set-up command without its installs: what a user runs once installed."""
    main = next(b.text for b in blocks_in("Set up", "bash") if "glan init" in b.text)
    parts = [p.strip() for p in main.split("&&")]
    return " && ".join(p for p in parts if "pip install" not in p)


def test_every_variable_the_readme_names_is_a_setting() -> None:
    settings = {f"GLAN_{name.upper()}" for name in Settings.model_fields}
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in DOCS)
    named = set(re.findall(r"GLAN_[A-Z0-9_]*[A-Z0-9]", text))
    assert named - settings - TEST_VARIABLES == set()
    # and the settings table lists every setting a user may change
    table = "\n".join(
        ln for ln in README.read_text(encoding="utf-8").splitlines() if ln.startswith("| `GLAN_")
    )
    for name in sorted(settings):
        assert f"`{name}`" in table, f"{name} is missing from the README's settings table"


# ------------------------------------------------------------------------ GraphQL examples


def graphql_operations() -> list[tuple[Block, str]]:
    found = []
    for block in readme_blocks():
        if block.lang == "graphql":
            document = parse(block.text)
            assert len(document.definitions) == 1, f"{block.where}: one operation per block"
            found.append((block, block.text))
    assert len(found) >= 4
    return found


def test_the_graphql_examples_validate_against_the_schema() -> None:
    for block, text in graphql_operations():
        errors = validate(schema._schema, parse(text))
        assert not errors, f"{block.where}: {[e.message for e in errors]}"


def problems(data: Any) -> list[str]:
    """Typed failures (NotFoundError, InvalidInputError, ...) anywhere in a result."""
    if isinstance(data, dict):
        found = [str(data)] if str(data.get("__typename", "")).endswith("Error") else []
        return found + [p for v in data.values() for p in problems(v)]
    if isinstance(data, list):
        return [p for v in data for p in problems(v)]
    return []


def test_the_graphql_examples_run(api: Api) -> None:
    job_id = None
    for block, text in graphql_operations():
        operation = parse(text).definitions[0]
        assert isinstance(operation, OperationDefinitionNode)
        if operation.operation == OperationType.SUBSCRIPTION:
            assert job_id is not None, "a subscription example follows the job it watches"
            events = subscribe(api, text.replace("job_...", job_id), {})
            assert events and not any(e.get("errors") for e in events), events
            data = events[-1]["data"]
        else:
            data = api.gql(text)
        assert not problems(data), f"{block.where}: {data}"
        for payload in data.values():
            job = payload.get("job") if isinstance(payload, dict) else None
            if job:  # a started generation: wait for it as a reader would
                job_id = job["id"]
                assert api.wait_for(job_id, timeout=60)["status"] == "COMPLETED"
    assert job_id is not None


# ------------------------------------------------------------------------ shell examples


def test_using_it(tmp_path: Path) -> None:
    (block,) = blocks_in("Using it", "bash")
    out = run_script(block.text, tmp_path, glan_env(tmp_path))
    assert "Biophysics" in out and "now under 2 discipline(s)" in out


@pytest.fixture
def benchmark_file(tmp_path: Path) -> Path:
    """The benchmark files "Datasets out" names, made from the suite's small one."""
    target = tmp_path / "gsm8k_test.jsonl"
    shutil.copy(ROOT / "tests" / "fixtures" / "benchmark.jsonl", target)
    shutil.copy(target, tmp_path / "gsm8k_train.jsonl")
    return target


def test_generating_then_datasets_out(tmp_path: Path, stub: Stub, benchmark_file: Path) -> None:
    """Generating runs against the stub (its `export` line points at a real endpoint: here
    the base URL is the stub's), then Datasets out runs on what it made."""
    env = glan_env(tmp_path)
    run_script("glan init", tmp_path, env)
    (generating,) = blocks_in("Generating", "bash")
    text = re.sub(r"GLAN_LLM_BASE_URL=\S+", f"GLAN_LLM_BASE_URL={stub.base_url}", generating.text)
    assert text != generating.text, "Generating should show how to point glan at an endpoint"
    out = run_script(text, tmp_path, env)
    assert "completed" in out
    assert stub.calls > 0

    (datasets,) = blocks_in("Datasets out", "bash")
    out = run_script(datasets.text, tmp_path, env)
    written = [tmp_path / "data.train.jsonl", tmp_path / "data.test.jsonl"]
    assert all(f.exists() and f.stat().st_size > 0 for f in written)
    assert all(str(f.name) in out for f in written)
    assert (tmp_path / "glan-dataset").is_dir()
    first = json.loads(written[0].read_text().splitlines()[0])
    assert first["messages"][0]["role"] == "user"


def test_the_server_commands_answer(tmp_path: Path) -> None:
    """Each command of the API section's block starts a server that answers a query."""
    (block,) = blocks_in("The GraphQL API", "bash")
    commands = [ln.split("#")[0].strip() for ln in block.text.splitlines() if ln.strip()]
    assert {c.split()[0] for c in commands} == {"glan", "uvicorn"}
    env = glan_env(tmp_path)
    run_script("glan init", tmp_path, env)
    for command in commands:
        port = free_port()
        server = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=tmp_path,
            env=env | {"GLAN_PORT": str(port), "UVICORN_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, f"{command} exited: {server.stdout.read()}"  # type: ignore[union-attr]
                try:
                    reply = httpx.post(
                        f"http://127.0.0.1:{port}/graphql",
                        json={
                            "query": "{ children { ... on TaxonomyNodeConnection { totalCount } } }"
                        },
                        timeout=5,
                    )
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"{command} did not answer"
                    time.sleep(0.25)
            assert reply.status_code == 200 and "errors" not in reply.json(), reply.text
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_cost(tmp_path: Path, stub: Stub) -> None:
    """Cost's commands against the stub, priced by a GLAN_PRICES table, over subjects and
    syllabi made under Algebra: the dry run asks nothing, the capped run finishes."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  stub: {input: 1, output: 2}\n", encoding="utf-8")
    env = glan_env(
        tmp_path, GLAN_LLM_BASE_URL=stub.base_url, GLAN_MODEL="stub", GLAN_PRICES=str(prices)
    )
    algebra = '"Formal Sciences/Mathematics/Algebra"'
    made = [f"generate subjects {algebra} --rounds 1", f"generate syllabus {algebra}"]
    run_script("\n".join(["glan init", *(f"glan {m}" for m in made)]), tmp_path, env)
    (block,) = blocks_in("Cost", "bash")
    calls = stub.calls
    out = " ".join(run_script(block.text, tmp_path, env).split())
    assert "dry run: nothing was stored and the model was not asked" in out
    assert "questions 200 units (0 done earlier, 200 to ask) on stub" in out
    assert "estimated total: $" in out
    assert "done: all 200 units of questions are done" in out
    assert stub.calls - calls == 200  # the dry run asked nothing


def test_large_runs(tmp_path: Path) -> None:
    """Large runs' commands against a Files + Batches API stub (which answers live calls
    too), over subjects and syllabi made under Algebra. The block's comment line stands for
    an offline runner: here an output file made from requests.jsonl by the stub's model."""
    from tests.batch_stub import run_batch_stub
    from tests.llm_stub import fake_glan_model
    from tests.test_batch import answer_offline

    with run_batch_stub(fake_glan_model()) as batches:
        env = glan_env(
            tmp_path,
            GLAN_LLM_BASE_URL=batches.base_url,
            GLAN_MODEL="stub",
            GLAN_BATCH_POLL_S="0.01",
        )
        algebra = '"Formal Sciences/Mathematics/Algebra"'
        made = [f"generate subjects {algebra} --rounds 1", f"generate syllabus {algebra}"]
        run_script("\n".join(["glan init", *(f"glan {m}" for m in made)]), tmp_path, env)
        (block,) = blocks_in("Large runs: batches and offline runners", "bash")
        lines = block.text.splitlines()
        runner = next(i for i, ln in enumerate(lines) if ln.startswith("# an offline runner"))
        out = " ".join(run_script("\n".join(lines[:runner]), tmp_path, env).split())
        assert "done: all 200 units of questions are done" in out
        assert "200 units wait in batches" in out and "done: all 200 units of answers" in out
        assert "100 requests written to requests.jsonl" in out
        assert len(batches.created) == 2  # one a job: the second answers run submits nothing
        requests = (tmp_path / "requests.jsonl").read_bytes()
        (tmp_path / "results.jsonl").write_bytes(answer_offline(requests))
        out = " ".join(run_script("\n".join(lines[runner + 1 :]), tmp_path, env).split())
        assert "100 done and 0 failed by this file" in out
        out = run_script("glan batch import results.jsonl", tmp_path, env)
        assert "0 done" in out and "100 lines skipped" in " ".join(out.split())


def test_quality(tmp_path: Path, stub: Stub) -> None:
    """Quality's commands against the stub, over pairs made under Algebra: the judge scores
    each, the report prints the scores, and export keeps those at or above the minimum."""
    env = glan_env(tmp_path, GLAN_LLM_BASE_URL=stub.base_url, GLAN_MODEL="stub")
    algebra = '"Formal Sciences/Mathematics/Algebra"'
    made = [
        f"generate subjects {algebra} --rounds 1 --per-call 2",
        f"generate syllabus {algebra} --sessions 3",
        f"generate questions {algebra} --n 12",
        f"generate answers {algebra}",
    ]
    run_script("\n".join(["glan init", *(f"glan {m}" for m in made)]), tmp_path, env)
    (block,) = blocks_in("Quality: validators and a judge", "bash")
    out = " ".join(run_script(block.text, tmp_path, env).split())
    assert "done: all 12 units of judge are done" in out
    assert "judge scores (1-10)" in out
    kept = [json.loads(x) for x in (tmp_path / "good.jsonl").read_text().splitlines()]
    assert all(r["metadata"]["score"] >= 7 for r in kept)
    assert f"wrote {len(kept)} pairs" in out


def test_conversations(tmp_path: Path, stub: Stub) -> None:
    """Conversations' command against the stub, over pairs made under Algebra: each pair
    goes on for two follow-up turns, asked and answered."""
    env = glan_env(tmp_path, GLAN_LLM_BASE_URL=stub.base_url, GLAN_MODEL="stub")
    algebra = '"Formal Sciences/Mathematics/Algebra"'
    made = [
        f"generate subjects {algebra} --rounds 1 --per-call 2",
        f"generate syllabus {algebra} --sessions 3",
        f"generate questions {algebra} --n 4",
        f"generate answers {algebra}",
    ]
    run_script("\n".join(["glan init", *(f"glan {m}" for m in made)]), tmp_path, env)
    (block,) = blocks_in("Conversations", "bash")
    out = " ".join(run_script(block.text, tmp_path, env).split())
    assert "done: all 16 units of followups are done" in out  # 4 pairs x 2 turns x 2 calls


def test_coverage_as_the_target(tmp_path: Path, stub: Stub) -> None:
    """Coverage's commands against the stub, over subjects and syllabi made under Algebra:
    the tree shows the space, the dry run asks nothing, the run covers every concept twice."""
    env = glan_env(tmp_path, GLAN_LLM_BASE_URL=stub.base_url, GLAN_MODEL="stub")
    algebra = '"Formal Sciences/Mathematics/Algebra"'
    made = [f"generate subjects {algebra} --rounds 1 --per-call 2", f"generate syllabus {algebra}"]
    run_script("\n".join(["glan init", *(f"glan {m}" for m in made)]), tmp_path, env)
    (block,) = blocks_in("Coverage as the target", "bash")
    calls = stub.calls
    out = " ".join(run_script(block.text, tmp_path, env).split())
    assert "0 of " in out and " combinations (0.00%)" in out
    assert "coverage: 2 question(s) per concept for all of" in out
    planned = int(re.findall(r"(\d+) questions bring", out)[0])
    assert f"done: all {planned} units of questions are done" in out
    assert stub.calls - calls == planned  # the dry run asked nothing
