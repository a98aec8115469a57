"""The coverage dashboard: the GraphQL reads it needs, and the page in a real browser.

The browser tests serve the real app on loopback over a small generated dataset and drive
the system Chromium headless through its chromedriver (Debian `chromium` and
`chromium-driver`; `.ci/run` installs them). Screenshots go to artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from graph.model import SUBJECT, Status
from graph.store import Store
from tests.api_helpers import Api, run_api, seed_taxonomy, settings
from tests.conftest import SMALL_TAXONOMY
from tests.llm_stub import Stub, fake_glan_model, run_stub
from tests.real_parts import unavailable
from tests.test_api import start
from tests.test_sampling import PHYSICS, fill

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
CHEMISTRY = "Natural Sciences/Physical Sciences/Chemistry"
BIOLOGY = "Natural Sciences/Life Sciences/Biology"
PURE = "Formal Sciences/Mathematics/Pure Mathematics"
TOKEN = "dashboard-token"

COVERAGE = """query($p: String) { coverage(path: $p) { ... on Coverage { total {
  coveredConcepts conceptCoverage combinations subjectsWithoutSyllabus disciplinesWithoutSubjects
  counts { subjects sessions concepts instructions responses } } children {
  path coveredConcepts counts { concepts } } } } }"""

GAPS = """query($p: String, $first: Int!) { gaps(path: $p, first: $first) {
  __typename
  ... on Gaps { path
    leastCoveredConcepts { concept { kind name } subject session instructions }
    subjectsWithoutSyllabus { kind name paths } }
  ... on Problem { message } } }"""

SUBTREE = """query($p: String, $d: Int!) { subtree(path: $p, depth: $d) {
  ... on TreeNode { path coveredConcepts conceptCoverage counts { concepts }
    children { path coveredConcepts conceptCoverage counts { concepts }
      children { path coveredConcepts counts { concepts }
        children { path coveredConcepts counts { concepts } } } } } } }"""


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with run_stub(fake_glan_model()) as s:
        yield s


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, stub: Stub) -> Iterator[Api]:
    """The small taxonomy, three Physics subjects with a syllabus each and one without,
    Chemistry proposed, Biology rejected; then questions and answers generated under
    Physics through the API (a token set), so part of the concepts are covered."""
    db = tmp_path_factory.mktemp("dashboard") / "api.lbug"
    with run_api(settings(db, stub, api_token=SecretStr(TOKEN))) as api:
        fill(api.store, subjects=3, sessions=3, concepts=4)
        physics = api.store.taxonomy.node(PHYSICS)
        api.store.syllabi.write_subjects(
            physics.id, [{"name": "Quantum Optics"}], {"model": "test"}
        )
        api.store.taxonomy.review(CHEMISTRY, Status.PROPOSED)
        api.store.taxonomy.review(BIOLOGY, Status.REJECTED)
        for mutation in (
            "generateInstructions(path: $p, n: 8, seed: 3)",
            "generateAnswers(path: $p)",
            "generateJudgements(path: $p)",
        ):
            job = start(api, mutation, {"p": PHYSICS}, token=TOKEN)
            assert api.wait_for(job["id"])["status"] == "COMPLETED"
        yield api


# ---------------------------------------------------------------------- the API it reads


def test_gaps_lists_least_covered_concepts_and_subjects_without_syllabus(dataset: Api) -> None:
    gaps = dataset.gql(GAPS, {"p": PHYSICS, "first": 5})["gaps"]
    assert gaps["__typename"] == "Gaps" and gaps["path"] == PHYSICS
    least = gaps["leastCoveredConcepts"]
    assert len(least) == 5 and all(g["concept"]["kind"] == "CONCEPT" for g in least)
    counts = [g["instructions"] for g in least]
    assert counts == sorted(counts) and counts[0] == 0
    assert {g["subject"] for g in least} <= {"Subject 0", "Subject 1", "Subject 2"}
    assert all(g["session"].startswith(f"S{g['subject'][-1]} session") for g in least)
    assert gaps["subjectsWithoutSyllabus"] == [
        {"kind": "SUBJECT", "name": "Quantum Optics", "paths": [f"{PHYSICS}/Quantum Optics"]}
    ]

    # the most covered concept is at the end of the full list, with what coverage counts
    everything = dataset.gql(GAPS, {"p": PHYSICS, "first": 500})["gaps"]["leastCoveredConcepts"]
    cov = dataset.gql(COVERAGE, {"p": PHYSICS})["coverage"]["total"]
    assert len(everything) == cov["counts"]["concepts"] == 3 * 3 * 4
    assert sum(1 for g in everything if g["instructions"]) == cov["coveredConcepts"] > 0

    # a subject: its own concepts; a rejected discipline: nothing; a bad path: typed error
    one = dataset.gql(GAPS, {"p": f"{PHYSICS.lower()}/subject 1", "first": 50})["gaps"]
    assert one["path"] == f"{PHYSICS}/Subject 1"  # as stored, whatever the case asked
    assert {g["subject"] for g in one["leastCoveredConcepts"]} == {"Subject 1"}
    assert one["subjectsWithoutSyllabus"] == []
    hidden = dataset.gql(GAPS, {"p": BIOLOGY, "first": 5})["gaps"]
    assert hidden["leastCoveredConcepts"] == hidden["subjectsWithoutSyllabus"] == []
    assert dataset.gql(GAPS, {"p": "Nope", "first": 5})["gaps"]["__typename"] == "NotFoundError"
    bad = dataset.gql(GAPS, {"p": PHYSICS, "first": 0})["gaps"]
    assert bad["__typename"] == "InvalidInputError"


def test_subtree_carries_the_coverage_query_numbers_at_every_level(dataset: Api) -> None:
    tree = dataset.gql(SUBTREE, {"p": None, "d": 3})["subtree"]
    root = dataset.gql(COVERAGE, {"p": None})["coverage"]
    assert tree["coveredConcepts"] == root["total"]["coveredConcepts"] > 0
    assert tree["conceptCoverage"] == pytest.approx(root["total"]["conceptCoverage"])
    seen = 0
    for field in tree["children"]:
        for sub in field["children"]:
            cov = dataset.gql(COVERAGE, {"p": sub["path"]})["coverage"]
            expected = {c["path"]: c["coveredConcepts"] for c in cov["children"]}
            got = {d["path"]: d["coveredConcepts"] for d in sub["children"]}
            assert got == expected
            seen += sum(got.values())
    assert seen == root["total"]["coveredConcepts"]
    subjects = dataset.gql(SUBTREE, {"p": PHYSICS, "d": 1})["subtree"]["children"]
    assert sorted(s["coveredConcepts"] for s in subjects)[-1] > 0
    assert {s["path"].rsplit("/", 1)[1] for s in subjects} == {
        "Subject 0",
        "Subject 1",
        "Subject 2",
        "Quantum Optics",
    }


def test_subtree_coverage_costs_one_query_per_level_only_when_asked(dataset: Api) -> None:
    plain = "{ subtree(depth: 3) { ... on TreeNode { path children { children { path } } } } }"
    with dataset.counting() as without:
        dataset.gql(plain)
    dataset.gql(SUBTREE, {"p": None, "d": 3})  # the first read brings subject rollups up to date
    with dataset.counting() as with_coverage:
        dataset.gql(SUBTREE, {"p": None, "d": 3})
    # a check for stale subject rollups, the root's covered concepts and one grouped query
    # for each of the three levels
    assert with_coverage.count - without.count == 5


def test_store_gaps_and_tree_coverage_on_every_backend(store: Store) -> None:
    """The new Cypher on each backend, with a subject shared by two disciplines: every
    concept and instruction is counted once however many paths reach it."""
    fill(store, subjects=2, sessions=2, concepts=3)
    store.taxonomy.link(PURE, f"{PHYSICS}/Subject 0")
    store.taxonomy.add_node(PHYSICS, SUBJECT, "Optics")
    syllabi = store.syllabi.of(store.taxonomy.ids_in_scope(None, SUBJECT))
    by_name = {store.nodes.get(sid).name: ss for sid, ss in syllabi.items()}  # type: ignore[union-attr]
    twice = by_name["Subject 0"][0].concepts[0]
    once = by_name["Subject 1"][1].concepts[2]
    for iid, concept, session in (
        ("ins_a", twice, by_name["Subject 0"][0]),
        ("ins_b", twice, by_name["Subject 0"][0]),
        ("ins_c", once, by_name["Subject 1"][1]),
    ):
        row = {"id": iid, "text": f"question {iid}", "combo_key": iid, "strategy": "basic"}
        store.instructions.write_instructions([row], [(iid, concept.id)], [(iid, session.id)])

    least = store.coverage.gaps(None, 100).least_covered
    assert len(least) == len({g.node.id for g in least}) == 2 * 2 * 3
    assert [g.instructions for g in least] == [0] * 10 + [1, 2]
    assert (least[-1].node.id, least[-1].subject) == (twice.id, "Subject 0")
    assert (least[-2].node.name, least[-2].session) == (once.name, "S1 session 1")
    assert [g.instructions for g in store.coverage.gaps(PHYSICS, 3).least_covered] == [0, 0, 0]
    assert [n.name for n in store.coverage.gaps(None).subjects_without_syllabus] == ["Optics"]
    assert store.coverage.gaps(PURE).subjects_without_syllabus == []

    tree = store.coverage.tree(None, 3, covered=True)
    assert tree.covered_concepts == store.coverage.report().total.covered_concepts == 2
    disciplines = {
        d.path: d.covered_concepts for f in tree.children for s in f.children for d in s.children
    }
    assert disciplines[PHYSICS] == 2 and disciplines[PURE] == 1
    assert sum(disciplines.values()) == 3  # the shared subject counts under both
    subjects = store.coverage.tree(PHYSICS, 1, covered=True).children
    assert {t.node.name: t.covered_concepts for t in subjects if t.node} == {
        "Subject 0": 1,
        "Subject 1": 1,
        "Optics": 0,
    }
    assert store.coverage.tree(None, 3).covered_concepts == 0  # not asked for: not computed


# ---------------------------------------------------------------------- the page served


def test_root_leads_to_the_dashboard_and_its_assets_are_served(dataset: Api) -> None:
    root = httpx.get(dataset.url + "/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/dashboard"
    page = httpx.get(dataset.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    scripts = [s.split('"')[0] for s in page.text.split('<script src="')[1:]]
    assert "/static/dashboard.js" in scripts and len(scripts) >= 6
    for src in [*scripts, "/static/dashboard.css"]:
        asset = httpx.get(dataset.url + src)
        assert asset.status_code == 200 and len(asset.content) > 500, src
        assert "://" not in page.text.split(src)[0].rsplit('"', 1)[-1]  # nothing remote


def test_graphiql_is_served_from_the_package_alone(dataset: Api) -> None:
    """The page a browser gets at /graphql names no other host: strawberry's own loads its
    scripts from a CDN and never renders offline."""
    page = httpx.get(dataset.url + "/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert set(assets) == {
        "data:,",
        "/static/vendor/react.production.min.js",
        "/static/vendor/react-dom.production.min.js",
        "/static/vendor/graphiql.min.js",
        "/static/vendor/graphiql.min.css",
        "/static/vendor/graphiql-plugin-explorer.umd.js",
        "/static/vendor/graphiql-plugin-explorer.css",
    }
    for src in (a for a in assets if a.startswith("/static/")):
        asset = httpx.get(dataset.url + src)
        assert asset.status_code == 200 and len(asset.content) > 500, src


# ---------------------------------------------------------------------- a real browser


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if not browser or not driver:
        reason = (
            "no system Chromium and chromedriver (apt-get install chromium chromium-driver; "
            ".ci/run installs them)"
        )
        unavailable(reason)  # .ci/run installs them: their absence fails a CI run
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,950",
        # loopback only: a page that reaches for a CDN fails here as it would offline
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except Exception:  # the DOM may be mid-render: try again until the deadline
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def arcs(driver: Any) -> list[Any]:
    return list(driver.find_elements("css selector", "#chart path.arc"))


def arc(driver: Any, path: str) -> Any:
    return driver.find_element("css selector", f'#chart path.arc[data-path="{path}"]')


def click_arc(driver: Any, target: str | Any) -> None:
    """Click a slice where a user would: at its centroid (the centre of its bounding box can
    lie on another slice)."""
    from selenium.webdriver.common.action_chains import ActionChains

    chart = driver.find_element("css selector", "#chart")
    wait_until(lambda: chart.get_attribute("data-animating") is None, what="the zoom to end")
    element = arc(driver, target) if isinstance(target, str) else target
    centroid = element.get_attribute("data-centroid") or ""
    x, y = (int(v) for v in centroid.split(","))
    ActionChains(driver).move_to_element_with_offset(chart, x, y).click().perform()


def panel_ready(driver: Any, path: str) -> bool:
    panel = driver.find_element("css selector", "#panel")
    return panel.get_attribute("data-path") == path and panel.get_attribute("data-state") == "ready"


def figure(driver: Any, key: str) -> str:
    return str(driver.find_element("css selector", f'#panel dd[data-figure="{key}"]').text)


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    assert driver.save_screenshot(str(out)) and out.stat().st_size > 10_000
    return out


def test_the_seed_with_nothing_generated_shows_the_next_command(
    browser: Any, tmp_path: Path, stub: Stub
) -> None:
    with run_api(settings(tmp_path / "seed.lbug", stub)) as api:
        api.store.taxonomy.load(seed_taxonomy())
        browser.get(api.url + "/")
        assert browser.current_url.endswith("/dashboard")
        wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
        tree = api.gql(SUBTREE, {"p": None, "d": 3})["subtree"]
        expected = sum(
            1 + len(f["children"]) + sum(len(s["children"]) for s in f["children"])
            for f in tree["children"]
        )
        assert expected > 100
        # nothing is generated: every discipline weighs the same, none is merged away
        assert len(arcs(browser)) == expected
        empty = browser.find_element("css selector", "#empty")
        assert empty.is_displayed() and "Nothing generated yet" in empty.text
        assert "glan generate" in empty.text
        assert figure(browser, "concepts") == "0" and figure(browser, "conceptCoverage") == "0%"
        assert console_errors(browser) == []
        shot(browser, "dashboard-seed.png")


def test_the_chart_zooms_into_a_discipline_and_fills_the_panel(browser: Any, dataset: Api) -> None:
    browser.get(dataset.url + "/dashboard")
    wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
    first = arcs(browser)
    assert len(first) == 2 + 3 + 5  # fields, sub-fields, disciplines of the small taxonomy
    assert not browser.find_element("css selector", "#empty").is_displayed()
    assert "proposed" in (arc(browser, CHEMISTRY).get_attribute("class") or "")
    assert "rejected" in (arc(browser, BIOLOGY).get_attribute("class") or "")
    # the subjects are not loaded until the chart zooms in
    assert not browser.find_elements("css selector", "#chart path.kind-subject")
    shot(browser, "dashboard-root.png")

    click_arc(browser, PHYSICS)
    wait_until(lambda: panel_ready(browser, PHYSICS), what="the Physics panel")
    center = browser.find_element("css selector", "#chart .center circle")
    assert center.get_attribute("data-path") == PHYSICS
    subjects = browser.find_elements("css selector", "#chart path.kind-subject")
    assert {s.get_attribute("data-name") for s in subjects} == {
        "Subject 0",
        "Subject 1",
        "Subject 2",
        "Quantum Optics",
    }
    crumbs = browser.find_element("css selector", "#crumbs").text
    assert crumbs.endswith("Physical Sciences › Physics")

    cov = dataset.gql(COVERAGE, {"p": PHYSICS})["coverage"]["total"]
    numbers = {
        "concepts": cov["counts"]["concepts"],
        "coveredConcepts": cov["coveredConcepts"],
        "instructions": cov["counts"]["instructions"],
        "responses": cov["counts"]["responses"],
        "subjects": cov["counts"]["subjects"],
        "sessions": cov["counts"]["sessions"],
        "combinations": cov["combinations"],
        "subjectsWithoutSyllabus": cov["subjectsWithoutSyllabus"],
    }
    assert numbers["instructions"] == 8 and numbers["subjectsWithoutSyllabus"] == 1
    assert {k: int(figure(browser, k).replace(",", "")) for k in numbers} == numbers
    assert figure(browser, "conceptCoverage") == f"{round(100 * cov['conceptCoverage'])}%"
    panel = browser.find_element("css selector", "#panel")
    no_syllabus = panel.find_elements("css selector", "ul.no-syllabus li")
    assert [li.text for li in no_syllabus] == ["Quantum Optics"]
    least = panel.find_elements("css selector", "ul.least-covered li")
    assert len(least) == 8 and least[0].text.startswith("0 ")
    assert len(panel.find_elements("css selector", "details.pair")) == 3
    shot(browser, "dashboard-physics.png")

    # clicking the centre zooms back out to the sub-field
    center.click()
    wait_until(
        lambda: panel_ready(browser, "Natural Sciences/Physical Sciences"), what="zooming out"
    )
    assert console_errors(browser) == []


SCORES = """query($p: String) { coverage(path: $p) { ... on Coverage {
  total { scores { judged mean histogram { score count } } }
  children { path scores { judged mean } } } } }"""


def test_a_toggle_colours_the_chart_by_mean_judge_score_with_histograms(
    browser: Any, dataset: Api
) -> None:
    def colour(path: str) -> str:
        return str(arc(browser, path).get_attribute("fill"))

    def ramp(share: float) -> str:
        return str(browser.execute_script("return ramp(arguments[0])", share))

    def bars() -> dict[int, int]:
        found = browser.find_elements("css selector", "#panel .scores .hist .bar")
        return {
            int(b.get_attribute("data-score")): int(b.get_attribute("data-count")) for b in found
        }

    def histogram(scores: dict[str, Any]) -> dict[int, int]:
        return {b["score"]: b["count"] for b in scores["histogram"]}

    store_scores = dataset.gql(SCORES, {"p": None})["coverage"]["total"]["scores"]
    physics = dataset.gql(SCORES, {"p": PHYSICS})["coverage"]
    mean = physics["total"]["scores"]["mean"]
    assert physics["total"]["scores"]["judged"] == store_scores["judged"] == 8

    browser.get(dataset.url + "/dashboard")
    wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
    coverage_colour = colour(PHYSICS)
    assert not browser.find_elements("css selector", "#panel .scores")  # coverage mode
    assert arc(browser, PHYSICS).get_attribute("data-score") == ""  # no scores asked for

    browser.find_element("css selector", "#by-score").click()
    wait_until(lambda: arc(browser, PHYSICS).get_attribute("data-score"), what="the scores")
    assert arc(browser, PHYSICS).get_attribute("data-score") == f"{mean:.2f}"
    assert colour(PHYSICS) == ramp((mean - 1) / 9)
    for path in (CHEMISTRY, PURE):  # nothing judged there: grey
        assert arc(browser, path).get_attribute("data-score") == "" and colour(path) == "#d0d0d0"
    legend = browser.find_element("css selector", "#legend-ramp").text
    assert legend == "mean judge score of the pairs below: 1 → 10"
    # the store's panel, drawn again, shows its histogram
    wait_until(lambda: panel_ready(browser, "") and bars(), what="the store's histogram")
    assert bars() == histogram(store_scores) and sum(bars().values()) == 8
    assert figure(browser, "meanScore") == f"{store_scores['mean']:.2f}"

    click_arc(browser, PHYSICS)
    wait_until(lambda: panel_ready(browser, PHYSICS) and bars(), what="the Physics histogram")
    assert bars() == histogram(physics["total"]["scores"])
    assert figure(browser, "judged") == "8" and figure(browser, "meanScore") == f"{mean:.2f}"
    # each subject slice carries its own mean, as coverage reads it
    by_subject = {c["path"]: c["scores"] for c in physics["children"]}
    for path, scores in by_subject.items():
        want = f"{scores['mean']:.2f}" if scores["judged"] else ""
        assert arc(browser, path).get_attribute("data-score") == want, path
    assert "mean score" in browser.find_element("css selector", "#chart .center text").text
    shot(browser, "dashboard-scores.png")

    def centre() -> str:
        circle = browser.find_element("css selector", "#chart .center circle")
        return str(circle.get_attribute("fill"))

    assert centre() == ramp((mean - 1) / 9)  # the focus, Physics, in the middle
    browser.find_element("css selector", "#by-score").click()  # back to coverage
    wait_until(lambda: centre() == coverage_colour, what="the coverage colours")
    wait_until(lambda: panel_ready(browser, PHYSICS), what="the Physics panel again")
    assert not browser.find_elements("css selector", "#panel .scores")
    assert console_errors(browser) == []


CONTAMINATION = """query($p: String) { coverage(path: $p) { ... on Coverage {
  total { contamination { benchmark split count share } } } } }"""


def test_the_score_panel_shows_the_nodes_contamination_counts(browser: Any, dataset: Api) -> None:
    from generators.cleaning import Benchmark, decontaminate

    store = dataset.store
    ids = store.instructions.ids_in_scope(store.taxonomy.scope(PHYSICS))
    planted = [n.props["text"] for n in store.nodes.get_many(ids[:2]).values()]
    decontaminate(store, None, [Benchmark("quiz", "test", planted)], method="containment")
    try:
        (row,) = dataset.gql(CONTAMINATION, {"p": PHYSICS})["coverage"]["total"]["contamination"]
        assert (row["benchmark"], row["split"], row["count"]) == ("quiz", "test", 2)

        def listed() -> dict[str, str]:
            items = browser.find_elements("css selector", "#panel ul.contamination li")
            return {i.get_attribute("data-benchmark"): i.get_attribute("data-count") for i in items}

        browser.get(dataset.url + "/dashboard")
        wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
        assert not browser.find_elements("css selector", "#panel .contamination")  # coverage
        browser.find_element("css selector", "#by-score").click()
        wait_until(lambda: listed(), what="the store's contamination")
        assert listed() == {"quiz:test": "2"}
        click_arc(browser, PHYSICS)
        wait_until(lambda: panel_ready(browser, PHYSICS) and listed(), what="Physics")
        text = browser.find_element("css selector", "#panel ul.contamination li").text
        assert text.startswith("2 quiz (test), ") and text.endswith("of the pairs")
        optics = f"{PHYSICS}/Quantum Optics"  # no pair there at all
        click_arc(browser, optics)
        wait_until(lambda: panel_ready(browser, optics), what="Quantum Optics")
        note = browser.find_element("css selector", "#panel section.contamination p").text
        assert note.startswith("No pair here matched a benchmark")
        assert console_errors(browser) == []
    finally:  # a run over the same benchmark with nothing in it lifts its marks
        decontaminate(store, None, [Benchmark("quiz", "test", [])], method="containment")
    assert dataset.gql(CONTAMINATION, {"p": PHYSICS})["coverage"]["total"]["contamination"] == []


COMBINATIONS = """query($p: String) { coverage(path: $p) { ... on Coverage {
  total { combinationSpace combinationShare }
  children { path combinationSpace combinationSpaceLog10 combinationsUsed combinationShare } } }
  gaps(path: $p, first: 8) { ... on Gaps {
    thinnestSessions { node { name } subject combinationShare combinationsUsed } } } }"""


def test_subtree_combination_figures_cost_no_query_beyond_coverage(dataset: Api) -> None:
    """The chart's tree always carries each node's combination figures: they are summed
    from the same subject rollups as its covered concepts, in the same grouped reads."""
    with_figures = SUBTREE.replace("coveredConcepts", "coveredConcepts combinationsUsed "
                                   "combinationSpaceLog10 combinationShare")  # fmt: skip
    dataset.gql(SUBTREE, {"p": None, "d": 3})
    with dataset.counting() as coverage_only:
        dataset.gql(SUBTREE, {"p": None, "d": 3})
    with dataset.counting() as both:
        found = dataset.gql(with_figures, {"p": None, "d": 3})["subtree"]
    assert both.count == coverage_only.count
    assert found["combinationsUsed"] == 8 and 0 < found["combinationShare"] < 1


def test_a_toggle_colours_the_chart_by_combination_share_and_the_panel_lists_thinnest_sessions(
    browser: Any, dataset: Api
) -> None:
    def colour(path: str) -> str:
        return str(arc(browser, path).get_attribute("fill"))

    def ramp_of_share(share: float) -> str:
        # the chart's log scale: 10^-6 or none -> 0, 1 -> 1
        at = max(0.0, 1 + math.log10(share) / 6) if share > 0 else 0.0
        return str(browser.execute_script("return ramp(arguments[0])", at))

    found = dataset.gql(COMBINATIONS, {"p": PHYSICS})
    children = {c["path"]: c for c in found["coverage"]["children"]}
    thinnest = found["gaps"]["thinnestSessions"]
    browser.get(dataset.url + "/dashboard")
    wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
    click_arc(browser, PHYSICS)
    wait_until(lambda: panel_ready(browser, PHYSICS), what="the Physics panel")
    coverage_colours = {path: colour(path) for path in children}

    browser.find_element("css selector", "#by-combinations").click()
    chart = browser.find_element("css selector", "#chart")
    wait_until(lambda: chart.get_attribute("data-colour") == "combinations", what="the toggle")
    for path, c in children.items():
        if c["combinationSpace"] is None or c["combinationSpaceLog10"] is None:
            assert colour(path) == "#d0d0d0", path  # no syllabus: no space, grey
        else:
            assert colour(path) == ramp_of_share(c["combinationShare"]), path
    assert {colour(p) for p in children} != set(coverage_colours.values())
    legend = browser.find_element("css selector", "#legend-ramp").text
    assert legend.startswith("share of the concept combinations asked")
    assert "combinations asked" in browser.find_element("css selector", "#chart .center text").text

    # the side panel: the space, the share, and the node's thinnest sessions
    space = int(found["coverage"]["total"]["combinationSpace"])
    assert figure(browser, "combinationSpace") == f"{space:,}"
    listed = browser.find_elements("css selector", "#panel ul.thinnest-sessions li")
    assert len(listed) == len(thinnest) == 8
    assert [li.text.split(" ", 1)[1].startswith(t["node"]["name"]) for li, t in
            zip(listed, thinnest, strict=True)] == [True] * 8  # fmt: skip
    assert listed[0].text.startswith("0%") and thinnest[0]["combinationsUsed"] == 0
    shot(browser, "dashboard-combinations.png")

    browser.find_element("css selector", "#by-combinations").click()  # back to coverage
    wait_until(
        lambda: {p: colour(p) for p in children} == coverage_colours, what="the coverage colours"
    )
    assert console_errors(browser) == []


def test_a_job_started_from_the_panel_reports_progress_live(browser: Any, dataset: Api) -> None:
    subject = f"{PHYSICS}/Subject 1"
    browser.get(dataset.url + "/dashboard")
    wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
    click_arc(browser, PHYSICS)
    wait_until(lambda: panel_ready(browser, PHYSICS), what="the Physics panel")
    click_arc(browser, subject)
    wait_until(lambda: panel_ready(browser, subject), what="the subject's panel")
    before = int(figure(browser, "instructions"))

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("css selector", "#stage")).select_by_value("questions")
    n = browser.find_element("css selector", "#gen-n")
    n.clear()
    n.send_keys("5")

    def status() -> str:
        return str(browser.find_element("css selector", "#panel .job-status").text)

    browser.find_element("css selector", "#start-job").click()
    # no token yet: the server refuses, and the panel says why
    wait_until(lambda: "GLAN_API_TOKEN" in status(), what="the refusal")

    browser.find_element("css selector", "#token").send_keys(TOKEN)
    browser.find_element("css selector", "#start-job").click()
    wait_until(lambda: "completed" in status(), what="the job to complete")
    assert "questions completed: 5 of 5 done" in status()
    # the page reloads what changed: the panel shows the new instructions, and the job
    wait_until(
        lambda: (
            panel_ready(browser, subject) and int(figure(browser, "instructions")) == before + 5
        ),
        what="the refreshed panel",
    )
    assert "5 of 5 done" in status()
    bar = browser.find_element("css selector", "#job-progress")
    assert bar.is_displayed() and bar.get_attribute("value") == bar.get_attribute("max") == "5"
    total = dataset.gql(COVERAGE, {"p": subject})["coverage"]["total"]["counts"]
    assert total["instructions"] == before + 5


def test_thousands_of_subjects_are_aggregated_and_stay_responsive(
    browser: Any, tmp_path: Path, stub: Stub
) -> None:
    many = 3000
    with run_api(settings(tmp_path / "big.lbug", stub)) as api:
        api.store.taxonomy.load(SMALL_TAXONOMY)
        physics = api.store.taxonomy.node(PHYSICS)
        names = [{"name": f"Topic {i:04d}"} for i in range(many)]
        api.store.syllabi.write_subjects(physics.id, names, {"model": "test"})
        browser.get(api.url + "/dashboard")
        wait_until(lambda: panel_ready(browser, ""), what="the store's panel")
        started = time.monotonic()
        click_arc(browser, PHYSICS)
        wait_until(lambda: panel_ready(browser, PHYSICS), what="the Physics panel")
        elapsed = time.monotonic() - started
        drawn = arcs(browser)
        groups = browser.find_elements("css selector", "#chart path.arc.other")
        # 3000 equal slices are too thin to draw: 50 slices of 60 subjects in name order
        assert len(drawn) == len(groups) == many // 60
        assert groups[0].get_attribute("data-name") == "Topic 0000 – Topic 0059 (60)"
        assert elapsed < 10, f"zooming into {many} subjects took {elapsed:.1f}s"
        assert figure(browser, "subjects") == f"{many:,}"

        click_arc(browser, groups[0])  # a group zooms in like a node, listing its members
        wait_until(
            lambda: (
                browser.find_element("css selector", "#panel").get_attribute("data-state")
                == "group"
            ),
            what="the group's panel",
        )
        members = browser.find_elements("css selector", "#panel ul.members li")
        assert len(members) == 60 and members[0].text.startswith("Topic 0000")
        subjects = browser.find_elements("css selector", "#chart path.kind-subject")
        assert [s.get_attribute("data-name") for s in subjects] == [
            f"Topic {i:04d}" for i in range(60)
        ]
        shot(browser, "dashboard-scale.png")
        click_arc(browser, f"{PHYSICS}/Topic 0007")
        wait_until(lambda: panel_ready(browser, f"{PHYSICS}/Topic 0007"), what="a subject")
        assert figure(browser, "subjects") == "0" and figure(browser, "concepts") == "0"


def editor(driver: Any, selector: str) -> Any:
    """The CodeMirror editor GraphiQL shows under `selector` (the editor tools keep the
    Variables and Headers editors both, one hidden), to read or set its text."""
    found = driver.find_elements("css selector", f"{selector} .CodeMirror")
    return next((cm for cm in found if cm.is_displayed()), None)


def set_text(driver: Any, cm: Any, text: str) -> None:
    driver.execute_script("arguments[0].CodeMirror.setValue(arguments[1])", cm, text)


def set_query(driver: Any, cm: Any, query: str) -> None:
    """Replace the operation and wait for GraphiQL to take it in: it parses the editor's text
    100 ms after the last change (and only then knows a subscription for one), then the page
    puts the text in its address."""
    set_text(driver, cm, query)
    wait_until(
        lambda: parse_qs(urlsplit(driver.current_url).query).get("q") == [query],
        what="GraphiQL to read the query",
    )


def response(driver: Any) -> Any:
    """The JSON the result pane shows, once it shows some."""
    cm = editor(driver, ".graphiql-response")
    shown = driver.execute_script("return arguments[0].CodeMirror.getValue()", cm)
    return json.loads(shown) if shown.strip() else None


def test_graphiql_runs_queries_and_subscriptions_offline(browser: Any, dataset: Api) -> None:
    """GraphiQL in a browser that reaches nothing but the app: it renders, runs a query, and
    with the token in its Headers tab runs a subscription over the websocket."""
    browser.get(dataset.url + "/graphql")
    query_editor = wait_until(lambda: editor(browser, ".graphiql-query-editor"), what="GraphiQL")
    origin = dataset.url + "/"
    requested = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any(r.endswith("/static/vendor/graphiql.min.js") for r in requested)
    assert [r for r in requested if not r.startswith(origin)] == []

    query = "{ coverage { ... on Coverage { total { counts { subjects } } } } }"
    set_query(browser, query_editor, query)
    browser.find_element("css selector", ".graphiql-execute-button").click()
    expected = {"data": dataset.gql(query)}
    assert expected["data"]["coverage"]["total"]["counts"]["subjects"] == 4
    assert wait_until(lambda: response(browser), what="the answer") == expected
    pane = browser.find_element("css selector", ".graphiql-response").text
    assert '"subjects": 4' in pane
    shot(browser, "graphiql-query.png")
    # the explorer plugin lists the schema's fields to click a query together
    browser.find_element("css selector", 'button[aria-label="Show GraphiQL Explorer"]').click()
    explorer = wait_until(
        lambda: browser.find_element("css selector", ".graphiql-explorer-root"),
        what="the explorer",
    )
    assert "coverage" in explorer.text and "gaps" in explorer.text

    # a subscription, authorized by the Headers tab: the token goes in connection_init
    answers = dataset.gql(
        "{ jobs(kind: ANSWERS) { ... on JobConnection { edges { node { id } } } } }"
    )
    job_id = answers["jobs"]["edges"][0]["node"]["id"]
    tabs = browser.find_elements("css selector", ".graphiql-editor-tools button")
    next(t for t in tabs if t.text == "Headers").click()
    headers = wait_until(lambda: editor(browser, ".graphiql-editor-tool"), what="the headers")
    set_text(browser, headers, json.dumps({"Authorization": f"Bearer {TOKEN}"}))
    set_query(
        browser,
        query_editor,
        f'subscription {{ jobProgress(id: "{job_id}") {{ ... on Job {{ id status }} }} }}',
    )
    browser.find_element("css selector", ".graphiql-execute-button").click()
    progress = {"data": {"jobProgress": {"id": job_id, "status": "COMPLETED"}}}
    assert wait_until(lambda: response(browser) == progress, what="the job's progress")
    shot(browser, "graphiql-subscription.png")
    assert console_errors(browser) == []
