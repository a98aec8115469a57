"""How much memory `glan serve` keeps after the work a long-lived server does.

A store of the graph benchmark's shape (`graph_scale.py`: the synthetic taxonomy, then
pairs) is built at --scale in a process of its own, or one kept by `graph_scale.py --keep`
is reused with --db. Then `glan serve` starts over it with default settings (or
--buffer-mb) and this process, over HTTP only:

1. reads whole-store `coverage` (the first read after the writes recomputes every
   subject's rollup) and the whole tree two levels down;
2. reads every instruction through the `instructions` query, 500 a page with their
   answers, concepts and subject: an export over the API (the CLI's `glan export` cannot
   open the store while the server holds it); --export-pages stops it sooner;
3. sends --queries more: coverage of the store and of a discipline, subtrees,
   instruction pages and node lookups, in turn.

After each phase it reads the server's resident memory (VmRSS) and its peak (VmHWM) from
/proc. Prints a table and a final JSON line.

    python bench/serve_memory.py --scale 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import MemoryWatch  # noqa: E402
from bench.server_load import COVERAGE, NODE, SUBTREE, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the issue's target for the server after this work, in MB
TARGET_RSS_MB = 1024.0

EXPORT_PAGE = """query($after: String) {
  instructions(first: 500, after: $after) { __typename
    ... on InstructionConnection {
      edges { node { id text strategy concepts { name } sessions { name } subject { name }
                     responses { text } } }
      pageInfo { hasNextPage endCursor } }
    ... on Problem { message } } }"""
PAGE = """query($p: String) { instructions(path: $p, first: 50) { __typename
    ... on InstructionConnection { edges { node { id text } } } ... on Problem { message } } }"""
DISCIPLINES = """{ subtree(depth: 3) { __typename ... on TreeNode {
  children { children { children { path } } } } } }"""
SUBJECTS = """query($p: String) { children(path: $p, first: 5) { __typename
  ... on TaxonomyNodeConnection { edges { node { path } } } } }"""

BUILD = """
import json, sys
sys.path.insert(0, {root!r})
from bench.graph_scale import fill
from graph.config import StoreConfig
from graph.store import Store
with Store.open(StoreConfig.model_validate_json({config!r})) as store:
    print(json.dumps(fill(store, {scale!r})))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(db: Path, scale: float) -> dict[str, Any]:
    """The graph benchmark's store at this scale, written by a process of its own."""
    from graph.config import StoreConfig

    code = BUILD.format(
        root=str(ROOT), config=StoreConfig(db_path=db).model_dump_json(), scale=scale
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the store failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def memory(pid: int) -> dict[str, float]:
    """The server's resident memory now and at its peak, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": found["VmRSS"], "peak_rss_mb": found["VmHWM"]}


class Client:
    """GraphQL over HTTP; every answer must be data, not an error."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=600)
        self.sent = 0

    def ask(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post("/graphql", json={"query": query, "variables": variables or {}})
        self.sent += 1
        body = response.json()
        if response.status_code != 200 or body.get("errors"):
            raise RuntimeError(f"HTTP {response.status_code}: {json.dumps(body)[:1000]}")
        data: dict[str, Any] = body["data"]
        for value in data.values():
            if isinstance(value, dict) and "message" in value:
                raise RuntimeError(f"{value.get('__typename')}: {value['message']}")
        return data


def export(client: Client, pages: int | None) -> int:
    """Every instruction, a page at a time (up to `pages` pages); how many were read."""
    read, after, n = 0, None, 0
    while pages is None or n < pages:
        page = client.ask(EXPORT_PAGE, {"after": after})["instructions"]
        read += len(page["edges"])
        n += 1
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    return read


def paths(client: Client) -> tuple[list[str], list[str]]:
    """The store's disciplines, and a few subjects of each of the first ten."""
    tree = client.ask(DISCIPLINES)["subtree"]
    disciplines = [
        discipline["path"]
        for field in tree["children"]
        for subfield in field["children"]
        for discipline in subfield["children"]
    ]
    subjects = [
        edge["node"]["path"]
        for path in disciplines[:10]
        for edge in client.ask(SUBJECTS, {"p": path})["children"]["edges"]
    ]
    return disciplines, subjects


def queries(client: Client, n: int, disciplines: list[str], subjects: list[str]) -> None:
    """n queries: the dashboard's and a browsing client's, in turn."""
    mix = [
        lambda i: client.ask(COVERAGE, {"p": None}),
        lambda i: client.ask(COVERAGE, {"p": disciplines[i % len(disciplines)]}),
        lambda i: client.ask(SUBTREE, {"p": disciplines[i % len(disciplines)]}),
        lambda i: client.ask(PAGE, {"p": disciplines[i % len(disciplines)]}),
        lambda i: client.ask(NODE, {"p": subjects[i % len(subjects)]}),
    ]
    for i in range(n):
        mix[i % len(mix)](i // len(mix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1, help="of the store to build")
    parser.add_argument("--db", type=Path, help="a store kept by graph_scale.py --keep")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--export-pages", type=int, help="stop the export after this many")
    parser.add_argument("--buffer-mb", type=int, help="GLAN_DB_BUFFER_MB for the server")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="glan-bench-"))
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores"}
    try:
        with MemoryWatch() as watch:
            db = args.db
            if db is None:
                db = folder / "store.lbug"
                log(f"building a store at scale {args.scale}")
                start = time.perf_counter()
                results.update(build(db, args.scale))
                results["build_s"] = round(time.perf_counter() - start, 1)
            env = {k: v for k, v in os.environ.items() if not k.startswith("GLAN_")}
            env.update(GLAN_DB_PATH=str(db), PYTHONPATH=str(ROOT))
            if args.buffer_mb is not None:
                env["GLAN_DB_BUFFER_MB"] = str(args.buffer_mb)
            results["buffer_mb"] = env.get("GLAN_DB_BUFFER_MB", "default")
            with serve(env, folder) as server:
                pid = server.proc.pid
                client = Client(server.url)
                results.update({f"started_{k}": v for k, v in memory(pid).items()})
                start = time.perf_counter()
                total = client.ask(COVERAGE, {"p": None})["coverage"]["total"]
                results["instructions"] = total["counts"]["instructions"]
                disciplines, subjects = paths(client)
                client.ask(SUBTREE, {"p": None})
                results["coverage_s"] = round(time.perf_counter() - start, 1)
                results.update({f"coverage_{k}": v for k, v in memory(pid).items()})
                log(f"  coverage: {results['coverage_s']} s, {memory(pid)}")
                start = time.perf_counter()
                results["exported"] = export(client, args.export_pages)
                results["export_s"] = round(time.perf_counter() - start, 1)
                results.update({f"export_{k}": v for k, v in memory(pid).items()})
                log(f"  export: {results['export_s']} s, {memory(pid)}")
                start = time.perf_counter()
                queries(client, args.queries, disciplines, subjects)
                results["queries"] = args.queries
                results["queries_s"] = round(time.perf_counter() - start, 1)
                results.update({f"end_{k}": v for k, v in memory(pid).items()})
                results["requests"] = client.sent
        # this process, and with its children (the store's builder and the server)
        results.update({f"bench_{k}": v for k, v in watch.figures().items()})
    finally:
        if args.db is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'measure':<28}{'value':>14}{'target':>10}")
    for key, value in results.items():
        target = TARGET_RSS_MB if key in ("end_rss_mb", "end_peak_rss_mb") else None
        shown = f"{value:>14,.1f}" if isinstance(value, float) else f"{value!s:>14}"
        print(f"{key:<28}{shown}{'' if target is None else f'{target:>10,.0f}'}")
    print(json.dumps({"bench": "serve_memory", **results}))


if __name__ == "__main__":
    main()
