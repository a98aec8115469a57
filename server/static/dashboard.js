// glan coverage dashboard: a zoomable sunburst of the taxonomy over the GraphQL API alone.
//
// Fields -> sub-fields -> disciplines come in one `subtree` query; the subjects below a node
// are fetched when the chart zooms into it, so a GLAN-sized store (thousands of subjects) is
// never loaded at once. Slices too thin to see or click are merged into "other (N)".
"use strict";

const KINDS = ["FIELD", "SUBFIELD", "DISCIPLINE", "SUBJECT"];
const SUBJECT_LEVEL = 3;
const RINGS = 3; // rings drawn around the focus
const MIN_FRACTION = 0.004; // of the full circle; thinner slices are aggregated
const GROUP = 60; // members of one aggregated slice, at most, while they fit
const TOKEN_KEY = "glan-api-token";

const NODE = "path coveredConcepts counts { subjects sessions concepts instructions responses } "
  + "combinationsUsed combinationSpaceLog10 node { id kind name status hidden }";
// in score mode each node also brings its judge scores (one grouped read per ring)
const SCORES = " scores { judged mean }";
function treeQuery() {
  const n = NODE + (state.byScore ? SCORES : "");
  return `query($p: String, $d: Int!) {
  subtree(path: $p, depth: $d) {
    __typename
    ... on TreeNode { ${n} children { ${n} children { ${n} children { ${n} } } } }
    ... on Problem { message }
  }
}`;
}
const PANEL = `query($p: String) {
  coverage(path: $p) {
    __typename
    ... on Coverage { total {
      path coveredConcepts conceptCoverage combinations
      combinationSpace combinationSpaceLog10 combinationsUsed combinationShare
      subjectsWithoutSyllabus disciplinesWithoutSubjects
      counts { disciplines subjects sessions concepts instructions responses }
    } }
    ... on Problem { message }
  }
  gaps(path: $p, first: 8) {
    __typename
    ... on Gaps {
      leastCoveredConcepts { concept { name } subject session instructions }
      subjectsWithoutSyllabus { name }
      thinnestSessions {
        node { name } subject combinationsUsed combinationSpace combinationSpaceLog10
        combinationShare
      }
    }
    ... on Problem { message }
  }
  sampleInstructions(path: $p, n: 3, seed: 0) {
    __typename
    ... on InstructionSample { instructions { id text responses { text } } }
    ... on Problem { message }
  }
}`;
const PANEL_SCORES =
  "scores { judged mean histogram { score count } } contamination { benchmark split count share }";
function panelQuery() {
  return state.byScore ? PANEL.replace("total {", `total { ${PANEL_SCORES}`) : PANEL;
}
const JOB_FIELDS = "id kind scope status live done failed total error";
const PROGRESS = `subscription($id: ID!) {
  jobProgress(id: $id) {
    __typename
    ... on Job { ${JOB_FIELDS} }
    ... on Problem { message }
  }
}`;
const STAGES = {
  subjects: { label: "subjects", call: "generateSubjects(path: $p)", minLevel: -1, maxLevel: 2 },
  syllabus: { label: "syllabus", call: "generateSyllabus(path: $p)", minLevel: -1, maxLevel: 3 },
  questions: {
    label: "questions",
    call: "generateInstructions(path: $p, n: $n)",
    minLevel: -1,
    maxLevel: 3,
  },
  answers: { label: "answers", call: "generateAnswers(path: $p)", minLevel: -1, maxLevel: 3 },
};

const MAX_LISTED = 200; // members of an "other (N)" slice listed in the panel

// jobs: the last progress seen per path, so a panel redrawn mid-job still shows it
// byScore: the chart is coloured by mean judge score instead of coverage
const state = {
  root: null,
  focus: null,
  selected: null,
  selectedSeq: 0,
  socket: null,
  jobs: {},
  byScore: false,
  // byCombinations: coloured by the share of each node's combination space asked about
  byCombinations: false,
};

// ------------------------------------------------------------------ GraphQL

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function gql(query, variables = {}, { auth = false } = {}) {
  const headers = { "content-type": "application/json" };
  if (auth && token()) headers.authorization = `Bearer ${token()}`;
  const response = await fetch("/graphql", {
    method: "POST",
    headers,
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors && body.errors.length) {
    throw new Error(body.errors.map((e) => e.message).join("; "));
  }
  return body.data;
}

/** Follow a job over graphql-transport-ws (the token, if any, goes in connection_init). */
function watchJob(id, onJob, onEnd) {
  if (state.socket) state.socket.close();
  const url = `${location.origin.replace(/^http/, "ws")}/graphql`;
  const ws = new WebSocket(url, "graphql-transport-ws");
  state.socket = ws;
  let ended = false;
  const end = (message) => {
    if (ended) return;
    ended = true;
    onEnd(message);
  };
  ws.onopen = () => {
    const payload = token() ? { Authorization: `Bearer ${token()}` } : {};
    ws.send(JSON.stringify({ type: "connection_init", payload }));
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "connection_ack") {
      const payload = { query: PROGRESS, variables: { id } };
      ws.send(JSON.stringify({ id: "progress", type: "subscribe", payload }));
    } else if (msg.type === "ping") {
      ws.send(JSON.stringify({ type: "pong" }));
    } else if (msg.type === "next") {
      const errors = msg.payload.errors;
      if (errors && errors.length) end(errors.map((e) => e.message).join("; "));
      else onJob(msg.payload.data.jobProgress);
    } else if (msg.type === "error") {
      end(msg.payload.map((e) => e.message).join("; "));
    } else if (msg.type === "complete") {
      ws.close();
      end(null);
    }
  };
  ws.onclose = (event) => {
    if (event.code === 4403) end("this server needs its API token to start or follow jobs");
    else end(null);
  };
}

// ------------------------------------------------------------------ the data

/** A TreeNode from the API as the chart keeps it; `children: null` means not fetched yet. */
function fromApi(t, level, fetchedTo, parent) {
  const n = {
    path: t.path,
    name: t.node ? t.node.name : "All fields",
    kind: t.node ? t.node.kind : "ROOT",
    status: t.node ? t.node.status : "APPROVED",
    hidden: t.node ? t.node.hidden : false,
    level,
    counts: t.counts,
    covered: t.coveredConcepts,
    combos: { used: t.combinationsUsed, log10: t.combinationSpaceLog10 },
    score: t.scores ? t.scores.mean : null,
    judged: t.scores ? t.scores.judged : 0,
    parent,
    children: null,
  };
  if (level < fetchedTo || level >= SUBJECT_LEVEL) {
    n.children = (t.children || []).map((c) => fromApi(c, level + 1, fetchedTo, n));
  }
  return n;
}

async function fetchTree(node) {
  const level = node ? node.level : -1;
  const depth = Math.min(RINGS, SUBJECT_LEVEL - level);
  const data = await gql(treeQuery(), { p: node ? node.path || null : null, d: depth });
  const t = data.subtree;
  if (t.__typename !== "TreeNode") throw new Error(t.message);
  return fromApi(t, level, level + depth, node ? node.parent : null);
}

function unfetched(node) {
  if (node.level >= SUBJECT_LEVEL) return false;
  if (node.children === null) return true;
  return node.children.some(unfetched);
}

/** Make sure the rings under `node` are in memory (one query for the whole view). */
async function ensureLoaded(node) {
  if (node.pseudo || !unfetched(node)) return; // a group shows what its members hold
  const fresh = await fetchTree(node);
  node.children = fresh.children;
  node.children.forEach((c) => (c.parent = node));
  Object.assign(node, {
    counts: fresh.counts,
    covered: fresh.covered,
    combos: fresh.combos,
    score: fresh.score,
    judged: fresh.judged,
  });
}

function coverageOf(n) {
  return n.counts.concepts ? n.covered / n.counts.concepts : null;
}

/** The share of a node's combination space asked about (null without a space). */
function combinationShareOf(n) {
  const c = n.combos;
  if (!c || c.log10 === null || c.log10 === undefined) return null;
  return Math.min(1, c.used / Math.pow(10, c.log10));
}

// shares of a combination space are small: coloured on a log scale over this many decades
const SHARE_DECADES = 6;

/** A combination share on the colour ramp, 0 to 1 (null without a space). */
function combinationColour(n) {
  const s = combinationShareOf(n);
  if (s === null) return null;
  return s > 0 ? Math.max(0, 1 + Math.log10(s) / SHARE_DECADES) : 0;
}

function lineage(node) {
  const out = [];
  for (let n = node; n; n = n.parent) out.unshift(n);
  return out;
}

// ------------------------------------------------------------------ the view

/** The focus and up to RINGS levels below it, thin slices merged into "other (N)". */
function buildView(focus) {
  const leaves = [];
  const collect = (n, depth) => {
    if (depth < RINGS && n.children && n.children.length) {
      n.children.forEach((c) => collect(c, depth + 1));
    } else leaves.push(n);
  };
  collect(focus, 0);
  // empty nodes still get a slice, a tenth of the average, so they can be clicked
  const base = Math.max(1, focus.counts.concepts / (10 * Math.max(1, leaves.length)));
  const weight = (n, depth) => {
    if (depth < RINGS && n.children && n.children.length) {
      return n.children.reduce((s, c) => s + weight(c, depth + 1), 0);
    }
    return (n.hidden ? 0 : n.counts.concepts) + base;
  };
  const total = weight(focus, 0);
  const build = (n, depth) => {
    const v = { data: n, weight: weight(n, depth) };
    if (!(depth < RINGS && n.children && n.children.length)) return v;
    const kids = n.children
      .map((c) => build(c, depth + 1))
      .sort((a, b) => b.weight - a.weight);
    const big = kids.filter((k) => k.weight / total >= MIN_FRACTION);
    const small = kids.filter((k) => k.weight / total < MIN_FRACTION);
    if (small.length > 1) big.push(...groups(n, small, total));
    else big.push(...small);
    v.children = big;
    return v;
  };
  return build(focus, 0);
}

/**
 * Thin slices merged: one "other (N)" slice, or for many of them, slices of up to GROUP
 * members in name order ("A – K (60)"), each a group the chart can zoom into like a node.
 */
function groups(parent, small, total) {
  const weight = small.reduce((s, k) => s + k.weight, 0);
  const wanted = Math.ceil(small.length / GROUP);
  const fit = Math.floor(weight / (MIN_FRACTION * total));
  const count = Math.max(1, Math.min(wanted, fit));
  const weightOf = new Map(small.map((k) => [k.data, k.weight]));
  const members = small.map((k) => k.data).sort((a, b) => a.name.localeCompare(b.name));
  const out = [];
  for (let i = 0; i < count; i++) {
    const part = members.slice(
      Math.floor((i * members.length) / count),
      Math.floor(((i + 1) * members.length) / count)
    );
    const sum = (f) => part.reduce((s, d) => s + (f(d) || 0), 0);
    const name =
      count === 1
        ? `other (${part.length})`
        : `${part[0].name} – ${part[part.length - 1].name} (${part.length})`;
    const group = {
      pseudo: true,
      name,
      kind: part[0].kind,
      level: parent.level,
      status: "APPROVED",
      hidden: false,
      path: null,
      parent,
      children: part,
      counts: {
        concepts: sum((d) => d.counts.concepts),
        instructions: sum((d) => d.counts.instructions),
        subjects: sum((d) => (d.level >= SUBJECT_LEVEL ? 1 : d.counts.subjects)),
      },
      covered: sum((d) => d.covered),
      combos: {
        used: sum((d) => d.combos && d.combos.used),
        log10: (() => {
          const space = sum((d) => (d.combos && d.combos.log10 !== null ? 10 ** d.combos.log10 : 0));
          return space > 0 ? Math.log10(space) : null;
        })(),
      },
      judged: sum((d) => d.judged),
    };
    // a group's mean score: its members' means weighted by their judged pairs
    group.score = group.judged ? sum((d) => (d.score || 0) * d.judged) / group.judged : null;
    const share = part.reduce((s, d) => s + weightOf.get(d), 0);
    out.push({ other: true, members: part, weight: share, data: group });
  }
  return out;
}

const ramp = d3.interpolateRgbBasis(["#d73027", "#fc8d59", "#fee08b", "#91cf60", "#1a9850"]);

// mean judge score 1 -> 10, on the same red-to-green ramp
function scoreShare(n) {
  return n.judged ? Math.max(0, Math.min(1, (n.score - 1) / 9)) : null;
}

function fillOf(n) {
  if (n.hidden || n.status === "REJECTED") return "url(#rejected)";
  if (state.byScore) {
    const s = scoreShare(n);
    return s === null ? "#d0d0d0" : ramp(s);
  }
  const c = state.byCombinations ? combinationColour(n) : coverageOf(n);
  return c === null ? "#d0d0d0" : ramp(c);
}

/** A share that may be far below 1%: two significant digits. */
function fine(x) {
  if (x === null || x === undefined) return "–";
  if (x === 0 || x >= 0.01) return pct(x);
  return `${(100 * x).toPrecision(2)}%`;
}

/** A combination space as the API gives it: exact while it fits int64, else 10^x. */
function spaceText(space, log10) {
  if (space !== null && space !== undefined) return BigInt(space).toLocaleString("en-US");
  return log10 === null || log10 === undefined ? "0" : `10^${log10.toFixed(1)}`;
}

function combinationText(n) {
  const log10 = n.combos ? n.combos.log10 : null;
  if (log10 === null || log10 === undefined) return "no combinations yet";
  const space = log10 < 15 ? num(Math.round(10 ** log10)) : `10^${log10.toFixed(1)}`;
  return `${fine(combinationShareOf(n))} of ${space} combinations asked`;
}

function scoreText(n) {
  return n.judged ? `mean score ${n.score.toFixed(1)} of ${num(n.judged)} judged` : "no judged pairs";
}

function pct(x) {
  return x === null ? "–" : `${(100 * x).toFixed(x > 0 && x < 0.01 ? 1 : 0)}%`;
}

function num(x) {
  return Number(x || 0).toLocaleString("en-US");
}

function render() {
  const svg = d3.select("#chart");
  const box = document.getElementById("chart-box");
  const top = box.getBoundingClientRect().top + window.scrollY;
  const size = Math.max(320, Math.min(box.clientWidth, window.innerHeight - top - 60));
  const radius = size / 2;
  const ring = radius / (RINGS + 1);
  svg.attr("viewBox", [-radius, -radius, size, size]).attr("width", size).attr("height", size);
  svg.selectAll("*").remove();
  svg.attr("data-animating", null);
  const defs = svg.append("defs");
  const hatch = defs
    .append("pattern")
    .attr("id", "rejected")
    .attr("patternUnits", "userSpaceOnUse")
    .attr("width", 6)
    .attr("height", 6)
    .attr("patternTransform", "rotate(45)");
  hatch.append("rect").attr("width", 6).attr("height", 6).attr("fill", "#eee");
  hatch.append("rect").attr("width", 2).attr("height", 6).attr("fill", "#999");

  const focus = state.focus;
  const hier = d3
    .hierarchy(buildView(focus), (v) => v.children)
    .sum((v) => (v.children ? 0 : v.weight));
  d3.partition().size([2 * Math.PI, RINGS + 1])(hier);
  const arc = d3
    .arc()
    .startAngle((d) => d.x0)
    .endAngle((d) => d.x1)
    .padAngle((d) => Math.min((d.x1 - d.x0) / 2, 0.003))
    .padRadius(radius * 1.5)
    .innerRadius((d) => d.y0 * ring)
    .outerRadius((d) => Math.max(d.y0 * ring, d.y1 * ring - 1));

  const nodes = hier.descendants().slice(1);
  const starts = zoomStarts(hier, nodes);
  const g = svg.append("g").attr("class", "arcs");
  const paths = g
    .selectAll("path")
    .data(nodes)
    .join("path")
    .attr("class", (d) => {
      const n = d.data.data;
      const cls = ["arc", `kind-${String(n.kind).toLowerCase()}`];
      if (d.data.other) cls.push("other");
      if (n.status === "PROPOSED") cls.push("proposed");
      if (n.hidden || n.status === "REJECTED") cls.push("rejected");
      if (state.selected && state.selected.node === n) cls.push("selected");
      return cls.join(" ");
    })
    .attr("d", arc)
    .attr("fill", (d) => fillOf(d.data.data))
    .attr("data-path", (d) => d.data.data.path || "")
    .attr("data-name", (d) => d.data.data.name)
    .attr("data-status", (d) => d.data.data.status)
    .attr("data-score", (d) => (d.data.data.judged ? d.data.data.score.toFixed(2) : ""))
    // where a click lands on this slice, from the chart's centre (the browser test uses it)
    .attr("data-centroid", (d) => arc.centroid(d).map(Math.round).join(","))
    .on("click", (event, d) => onArcClick(d.data));
  paths
    .append("title")
    .text((d) => {
      const n = d.data.data;
      const status = n.status && n.status !== "APPROVED" ? ` [${n.status.toLowerCase()}]` : "";
      return `${n.name}${status}\n${num(n.counts.concepts)} concepts, ${pct(coverageOf(n))} `
        + "covered" + (n.counts.instructions !== undefined
          ? `\n${num(n.counts.subjects)} subjects, ${num(n.counts.instructions)} instructions`
          : "")
        + (combinationShareOf(n) !== null ? `\n${combinationText(n)}` : "")
        + (state.byScore ? `\n${scoreText(n)}` : "");
    });

  const labels = svg
    .append("g")
    .attr("class", "labels")
    .attr("pointer-events", "none")
    .selectAll("text")
    .data(nodes.filter((d) => ((d.y0 + d.y1) / 2) * ring * (d.x1 - d.x0) > 13))
    .join("text")
    .attr("transform", (d) => {
      const x = (((d.x0 + d.x1) / 2) * 180) / Math.PI;
      const y = ((d.y0 + d.y1) / 2) * ring;
      return `rotate(${x - 90}) translate(${y},0) rotate(${x < 180 ? 0 : 180})`;
    })
    .attr("dy", "0.35em")
    .text((d) => clip(d.data.data.name, (d.y1 - d.y0) * ring - 8));

  const center = svg.append("g").attr("class", "center");
  center
    .append("circle")
    .attr("r", hier.y1 * ring - 2) // the focus's own ring: wider when fewer rings are below
    .attr("fill", fillOf(focus))
    .attr("data-path", focus.path || "")
    .on("click", () => {
      if (focus.parent) zoomTo(focus.parent);
      else select(focus);
    })
    .append("title")
    .text(focus.parent ? "zoom out" : "the whole store");
  const label = center.append("text").attr("pointer-events", "none").attr("text-anchor", "middle");
  const inner = 2 * hier.y1 * ring - 24;
  label.append("tspan").attr("x", 0).attr("dy", "-0.3em").text(clip(focus.name, inner));
  label
    .append("tspan")
    .attr("x", 0)
    .attr("dy", "1.3em")
    .attr("class", "small")
    .text(
      state.byScore
        ? scoreText(focus)
        : focus.counts.concepts
          ? state.byCombinations
            ? combinationText(focus)
            : `${pct(coverageOf(focus))} of ${num(focus.counts.concepts)} concepts covered`
          : "no concepts yet"
    );
  if (focus.parent) {
    label.append("tspan").attr("x", 0).attr("dy", "1.4em").attr("class", "small hint").text("click to zoom out");
  }
  renderCrumbs();
  state.layout = new Map(hier.descendants().map((d) => [d.data.data, d]));
  state.focusY1 = hier.y1;
  if (starts) animate(svg, paths, arc, starts, labels);
}

/**
 * Where each new slice starts its zoom animation, or null when there is nothing to animate
 * from. Zooming in, the slices grow out of the one that was clicked; zooming out, they
 * shrink back from the whole circle into the focus they leave.
 */
function zoomStarts(hier, nodes) {
  const old = state.layout;
  if (!old || !state.previousFocus || state.previousFocus === state.focus) return null;
  if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) return null;
  const full = 2 * Math.PI;
  const was = old.get(state.focus); // zooming in: where the new focus was drawn
  if (was) {
    const sx = (was.x1 - was.x0) / full;
    const sy = (was.y1 - was.y0) / hier.y1;
    return new Map(
      nodes.map((d) => [
        d,
        { x0: was.x0 + d.x0 * sx, x1: was.x0 + d.x1 * sx, y0: was.y0 + d.y0 * sy, y1: was.y0 + d.y1 * sy },
      ])
    );
  }
  const left = nodes.find((d) => d.data.data === state.previousFocus); // zooming out
  if (!left) return null;
  const sx = full / (left.x1 - left.x0);
  const sy = state.focusY1 / Math.max(1e-6, left.y1 - left.y0);
  const cx = (x) => Math.max(0, Math.min(full, (x - left.x0) * sx));
  const cy = (y) => Math.max(0, (y - left.y0) * sy);
  return new Map(
    nodes.map((d) => [d, { x0: cx(d.x0), x1: cx(d.x1), y0: cy(d.y0), y1: cy(d.y1) }])
  );
}

function animate(svg, paths, arc, starts, labels) {
  const duration = 450;
  const t0 = performance.now();
  const ease = (t) => (t < 0.5 ? 4 * t * t * t : 1 - Math.pow(-2 * t + 2, 3) / 2);
  const token = (state.animation = {});
  labels.attr("opacity", 0);
  svg.attr("data-animating", "1");
  const frame = (now) => {
    if (state.animation !== token) return; // a newer render took over
    const t = Math.min(1, (now - t0) / duration);
    const k = ease(t);
    paths.attr("d", (d) => {
      const a = starts.get(d);
      if (!a) return arc(d);
      return arc({
        x0: a.x0 + (d.x0 - a.x0) * k,
        x1: a.x1 + (d.x1 - a.x1) * k,
        // rings start past the edge when the focus was not at the centre: keep them inside
        y0: Math.min(RINGS + 1, a.y0 + (d.y0 - a.y0) * k),
        y1: Math.min(RINGS + 1, a.y1 + (d.y1 - a.y1) * k),
      });
    });
    if (t < 1) requestAnimationFrame(frame);
    else {
      labels.attr("opacity", 1);
      svg.attr("data-animating", null);
    }
  };
  requestAnimationFrame(frame);
}

function clip(text, px) {
  const fits = Math.max(3, Math.floor(px / 6.2));
  return text.length <= fits ? text : `${text.slice(0, fits - 1)}…`;
}

function renderCrumbs() {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren();
  lineage(state.focus).forEach((n, i) => {
    if (i) nav.append(" › ");
    const a = document.createElement("a");
    a.href = "#";
    a.textContent = n.name;
    a.onclick = (e) => {
      e.preventDefault();
      zoomTo(n);
    };
    nav.append(a);
  });
}

function onArcClick(v) {
  if (v.other || v.data.pseudo) {
    zoomTo(v.data);
  } else if (v.data.level >= SUBJECT_LEVEL) {
    select(v.data);
  } else {
    zoomTo(v.data);
  }
}

async function zoomTo(node) {
  try {
    await ensureLoaded(node);
  } catch (err) {
    showError(err);
    return;
  }
  state.previousFocus = state.focus;
  state.focus = node;
  render();
  state.previousFocus = null; // later redraws (selection, resize) do not animate
  if (node.pseudo) selectGroup(node);
  else select(node);
}

// ------------------------------------------------------------------ the side panel

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function markSelected() {
  const node = state.selected && state.selected.node;
  d3.selectAll("#chart path.arc").classed("selected", (d) => d.data.data === node);
}

/** The panel of an aggregated slice: its members, each a link to zoom in or select. */
function selectGroup(group) {
  state.selectedSeq++;
  state.selected = { node: group };
  const panel = document.getElementById("panel");
  panel.setAttribute("data-path", "");
  panel.setAttribute("data-state", "group");
  const sorted = group.children;
  const items = sorted
    .slice(0, MAX_LISTED)
    .map((m) =>
      el(
        "li",
        {},
        el("a", { href: "#", onclick: (e) => (e.preventDefault(), onArcClick({ data: m })) }, m.name),
        el("span", { class: "muted" }, ` ${num(m.counts.concepts)} concepts, ${pct(coverageOf(m))}`)
      )
    );
  panel.replaceChildren(
    el("h2", {}, group.name),
    el(
      "p",
      { class: "muted" },
      `${num(group.counts.concepts)} concepts, ${pct(coverageOf(group))} covered. `
        + "Slices too thin to draw on their own, merged into this one:"
    ),
    el("ul", { class: "members" }, ...items),
    sorted.length > MAX_LISTED
      ? el("p", { class: "muted" }, `and ${num(sorted.length - MAX_LISTED)} more`)
      : null
  );
}

async function select(node) {
  const seq = ++state.selectedSeq;
  state.selected = { node };
  markSelected(); // not a redraw: that would cut a zoom animation short
  const panel = document.getElementById("panel");
  panel.setAttribute("data-path", node.path || "");
  panel.setAttribute("data-state", "loading");
  let data;
  try {
    data = await gql(panelQuery(), { p: node.path || null });
  } catch (err) {
    if (seq === state.selectedSeq) showError(err);
    return;
  }
  if (seq !== state.selectedSeq) return; // a later click won
  const cov = data.coverage;
  const kind = node.kind === "ROOT" ? "store" : node.kind.toLowerCase();
  const head = el(
    "div",
    { class: "head" },
    el("h2", {}, node.name),
    el("span", { class: `badge ${String(node.status).toLowerCase()}` }, node.hidden && node.status !== "REJECTED" ? "hidden" : node.status.toLowerCase()),
    el("div", { class: "muted" }, kind + (node.path ? ` · ${node.path}` : ""))
  );
  const parts = [head];
  if (cov.__typename !== "Coverage") {
    parts.push(el("p", { class: "error" }, cov.message));
  } else {
    parts.push(figures(cov.total));
    if (cov.total.scores) parts.push(scoresSection(cov.total.scores));
    if (cov.total.contamination) parts.push(contaminationSection(cov.total.contamination));
  }
  parts.push(gapsSection(data.gaps, cov.__typename === "Coverage" ? cov.total : null));
  parts.push(samplesSection(data.sampleInstructions));
  parts.push(generateSection(node, cov.__typename === "Coverage" ? cov.total : null));
  panel.replaceChildren(...parts);
  panel.setAttribute("data-state", "ready");
}

function figures(t) {
  const c = t.counts;
  const rows = [
    ["conceptCoverage", "concept coverage", pct(t.conceptCoverage)],
    ["concepts", "concepts", num(c.concepts)],
    ["coveredConcepts", "covered concepts", num(t.coveredConcepts)],
    ["instructions", "instructions", num(c.instructions)],
    ["responses", "answers", num(c.responses)],
    ["combinations", "concept combinations", num(t.combinations)],
    ["combinationSpace", "combination space", spaceText(t.combinationSpace, t.combinationSpaceLog10)],
    ["combinationShare", "combination share", fine(t.combinationShare)],
    ["subjects", "subjects", num(c.subjects)],
    ["sessions", "sessions", num(c.sessions)],
    ["subjectsWithoutSyllabus", "subjects without a syllabus", num(t.subjectsWithoutSyllabus)],
    [
      "disciplinesWithoutSubjects",
      "disciplines without subjects",
      num(t.disciplinesWithoutSubjects),
    ],
  ];
  const bar = el("div", { class: "coverbar" }, el("div", { class: "fill" }));
  bar.firstChild.style.width = `${Math.round(100 * t.conceptCoverage)}%`;
  bar.firstChild.style.background = ramp(t.conceptCoverage);
  const dl = el("dl", { class: "figures" });
  for (const [key, label, value] of rows) {
    dl.append(el("dt", {}, label), el("dd", { "data-figure": key }, value));
  }
  return el("section", {}, bar, dl);
}

/** The node's judge scores: mean, pairs judged, and how many got each score 1-10. */
function scoresSection(s) {
  const box = el("section", { class: "scores" }, el("h3", {}, "Judge scores"));
  const dl = el("dl", { class: "figures" });
  dl.append(
    el("dt", {}, "judged pairs"),
    el("dd", { "data-figure": "judged" }, num(s.judged)),
    el("dt", {}, "mean score"),
    el("dd", { "data-figure": "meanScore" }, s.mean === null ? "–" : s.mean.toFixed(2))
  );
  box.append(dl);
  if (!s.judged) {
    box.append(el("p", { class: "muted" }, "No pair here is judged yet (glan generate judge)."));
    return box;
  }
  const top = Math.max(...s.histogram.map((b) => b.count));
  const hist = el("div", { class: "hist", role: "img", "aria-label": "pairs per score" });
  const axis = el("div", { class: "hist-axis" });
  for (const b of s.histogram) {
    const bar = el("div", {
      class: b.count ? "bar" : "bar empty",
      "data-score": String(b.score),
      "data-count": String(b.count),
      title: `score ${b.score}: ${num(b.count)} pairs`,
    });
    bar.style.height = `${Math.round((100 * b.count) / top)}%`;
    bar.style.background = b.count ? ramp((b.score - 1) / 9) : "";
    hist.append(bar);
    axis.append(el("span", {}, String(b.score)));
  }
  box.append(hist, axis);
  return box;
}

/** The node's pairs that hold a benchmark's text, per benchmark split (glan decontaminate). */
function contaminationSection(rows) {
  const box = el("section", { class: "contamination" }, el("h3", {}, "Contamination"));
  if (!rows.length) {
    box.append(el("p", { class: "muted" }, "No pair here matched a benchmark (glan decontaminate)."));
    return box;
  }
  const list = el("ul", { class: "contamination" });
  for (const r of rows) {
    list.append(
      el(
        "li",
        { "data-benchmark": `${r.benchmark}:${r.split}`, "data-count": String(r.count) },
        el("span", { class: "count" }, num(r.count)),
        ` ${r.benchmark} (${r.split}), ${pct(r.share)} of the pairs`
      )
    );
  }
  box.append(list);
  return box;
}

function gapsSection(gaps, total) {
  const box = el("section", { class: "gaps" });
  if (gaps.__typename !== "Gaps") {
    box.append(el("p", { class: "error" }, gaps.message));
    return box;
  }
  if (gaps.subjectsWithoutSyllabus.length) {
    const more = total ? total.subjectsWithoutSyllabus - gaps.subjectsWithoutSyllabus.length : 0;
    box.append(
      el("h3", {}, "Subjects without a syllabus"),
      el(
        "ul",
        { class: "no-syllabus" },
        ...gaps.subjectsWithoutSyllabus.map((s) => el("li", {}, s.name)),
        more > 0 ? el("li", { class: "muted" }, `and ${num(more)} more`) : null
      )
    );
  }
  if (gaps.thinnestSessions.length) {
    box.append(
      el("h3", {}, "Thinnest sessions (combinations asked)"),
      el(
        "ul",
        { class: "thinnest-sessions" },
        ...gaps.thinnestSessions.map((g) =>
          el(
            "li",
            {},
            el("span", { class: `count ${g.combinationsUsed ? "" : "zero"}` }, fine(g.combinationShare)),
            ` ${g.node.name} `,
            el(
              "span",
              { class: "muted" },
              `${g.subject} · ${num(g.combinationsUsed)} of `
                + spaceText(g.combinationSpace, g.combinationSpaceLog10)
            )
          )
        )
      )
    );
  }
  if (gaps.leastCoveredConcepts.length) {
    box.append(
      el("h3", {}, "Least covered concepts"),
      el(
        "ul",
        { class: "least-covered" },
        ...gaps.leastCoveredConcepts.map((g) =>
          el(
            "li",
            {},
            el("span", { class: `count ${g.instructions ? "" : "zero"}` }, String(g.instructions)),
            ` ${g.concept.name} `,
            el("span", { class: "muted" }, `${g.subject} › ${g.session}`)
          )
        )
      )
    );
  }
  return box;
}

function samplesSection(sample) {
  const box = el("section", { class: "samples" }, el("h3", {}, "Sample instructions"));
  if (sample.__typename !== "InstructionSample") {
    box.append(el("p", { class: "muted" }, sample.message));
  } else if (!sample.instructions.length) {
    box.append(el("p", { class: "muted" }, "No instructions here yet."));
  } else {
    for (const i of sample.instructions) {
      const answer = i.responses.length ? i.responses[0].text : null;
      box.append(
        el(
          "details",
          { class: "pair" },
          el("summary", {}, clip(i.text, 560)),
          el("p", { class: "q" }, i.text),
          el("p", { class: answer ? "a" : "a muted" }, answer || "no answer yet")
        )
      );
    }
  }
  return box;
}

function suggestedStage(node, t) {
  if (!t) return "subjects";
  if (node.level < SUBJECT_LEVEL && t.disciplinesWithoutSubjects > 0) return "subjects";
  if (t.subjectsWithoutSyllabus > 0 || t.counts.concepts === 0) return "syllabus";
  if (t.counts.responses < t.counts.instructions && t.conceptCoverage >= 0.5) return "answers";
  return "questions";
}

function generateSection(node, total) {
  const box = el("section", { class: "generate" }, el("h3", {}, "Generate under this node"));
  if (node.hidden || node.status !== "APPROVED") {
    box.append(el("p", { class: "muted" }, "Approve this node first (glan review PATH --approve)."));
    return box;
  }
  const stage = el("select", { id: "stage" });
  const usable = Object.entries(STAGES).filter(([, s]) => node.level <= s.maxLevel);
  for (const [key, s] of usable) stage.append(el("option", { value: key }, s.label));
  stage.value = suggestedStage(node, total);
  const n = el("input", { id: "gen-n", type: "number", min: "1", max: "100000", value: "10" });
  const tok = el("input", {
    id: "token",
    type: "password",
    placeholder: "API token (if the server has one)",
    autocomplete: "off",
  });
  tok.value = token();
  tok.onchange = () => sessionStorage.setItem(TOKEN_KEY, tok.value.trim());
  const key = node.path || "";
  const status = el("div", { class: "job-status muted" });
  const bar = el("progress", { id: "job-progress", max: "1", value: "0", hidden: "" });
  const start = el("button", { id: "start-job", type: "button" }, "Start");
  const seen = state.jobs[key];
  if (seen) {
    status.textContent = seen.text;
    bar.hidden = !seen.max;
    bar.max = seen.max || 1;
    bar.value = seen.value || 0;
    start.disabled = seen.running;
  }
  const nRow = el("label", {}, "questions ", n);
  const syncN = () => (nRow.hidden = stage.value !== "questions");
  stage.onchange = syncN;
  syncN();
  start.onclick = () => startJob(node, stage.value, Number(n.value));
  box.append(el("div", { class: "row" }, stage, nRow, start), tok, bar, status);
  return box;
}

/** Show a job's state in the panel of `key`, now and whenever that panel is drawn again. */
function report(key, update) {
  const seen = (state.jobs[key] = { ...(state.jobs[key] || {}), ...update });
  const panel = document.getElementById("panel");
  if ((panel.getAttribute("data-path") || "") !== key) return;
  const status = panel.querySelector(".job-status");
  const bar = panel.querySelector("#job-progress");
  const start = panel.querySelector("#start-job");
  if (!status || !bar || !start) return;
  status.textContent = seen.text || "";
  bar.hidden = !seen.max;
  bar.max = seen.max || 1;
  bar.value = seen.value || 0;
  start.disabled = !!seen.running;
}

async function startJob(node, stageKey, n) {
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  if (!node.path && !window.confirm(`Generate ${stageKey} across the whole store?`)) return;
  const key = node.path || "";
  const stage = STAGES[stageKey];
  const vars = stageKey === "questions" ? "$p: String, $n: Int!" : "$p: String";
  const query = `mutation(${vars}) { run: ${stage.call} {
    __typename
    ... on JobPayload { job { ${JOB_FIELDS} } }
    ... on JobConflictError { jobId }
    ... on Problem { message }
  } }`;
  const variables = stageKey === "questions" ? { p: node.path || null, n } : { p: node.path || null };
  report(key, { text: "starting…", running: true, max: 0 });
  let result;
  try {
    result = (await gql(query, variables, { auth: true })).run;
  } catch (err) {
    report(key, { text: err.message, running: false });
    return;
  }
  let id;
  if (result.__typename === "JobPayload") id = result.job.id;
  else if (result.__typename === "JobConflictError" && result.jobId) id = result.jobId;
  else {
    report(key, { text: result.message, running: false });
    return;
  }
  watchJob(
    id,
    (job) => {
      if (job.__typename !== "Job") {
        report(key, { text: job.message });
        return;
      }
      report(key, {
        max: Math.max(1, job.total),
        value: job.done + job.failed,
        text:
          `${job.kind.toLowerCase()} ${job.status.toLowerCase().replace(/_/g, " ")}: `
          + `${num(job.done)} of ${num(job.total)} done`
          + (job.failed ? `, ${num(job.failed)} failed` : "")
          + (job.error ? ` (${job.error})` : ""),
      });
    },
    async (problem) => {
      report(key, problem ? { text: problem, running: false } : { running: false });
      await refresh();
    }
  );
}

// ------------------------------------------------------------------ start

function showError(err) {
  const box = document.getElementById("error");
  box.textContent = `The API answered: ${err.message || err}`;
  box.hidden = false;
}

function showEmptyState(root) {
  const box = document.getElementById("empty");
  const c = root.counts;
  const cmd = (text) => el("code", {}, text);
  let message = null;
  if (!root.children || !root.children.length) {
    message = ["The store holds no taxonomy yet. Run ", cmd("glan init"), " and reload."];
  } else if (!c.subjects) {
    message = [
      "Nothing generated yet: every discipline is waiting for subjects. Run ",
      cmd('glan generate all "Formal Sciences/Mathematics/Algebra" --local'),
      " (or ",
      cmd('glan generate subjects "<discipline path>"'),
      " then syllabus, questions and answers), or click a discipline and press Start.",
    ];
  } else if (!c.instructions) {
    message = [
      "Subjects are here but no instructions yet. Run ",
      cmd('glan generate questions "<path>" --n 100'),
      " or pick a node and start a questions job.",
    ];
  }
  box.hidden = !message;
  if (message) box.replaceChildren(...message);
}

async function refresh() {
  const keep = state.focus ? lineage(state.focus).map((n) => n.path) : [];
  const selected = state.selected && state.selected.node.path;
  try {
    state.root = await fetchTree(null);
  } catch (err) {
    showError(err);
    return;
  }
  showEmptyState(state.root);
  let focus = state.root;
  for (const path of keep.slice(1)) {
    const next = (focus.children || []).find((c) => c.path === path);
    if (!next) break;
    await ensureLoaded(next);
    focus = next;
  }
  state.focus = focus;
  const again = selected && (focus.children || []).find((c) => c.path === selected);
  render();
  select(again || focus);
}

window.addEventListener("resize", () => state.focus && render());

const LEGEND = {
  coverage: "concepts covered by an instruction: 0% → 100%",
  score: "mean judge score of the pairs below: 1 → 10",
};
document.getElementById("by-score").addEventListener("change", (event) => {
  state.byScore = event.target.checked;
  document.querySelector("#legend-ramp .text").textContent =
    LEGEND[state.byScore ? "score" : "coverage"];
  state.layout = null; // a new colouring, not a zoom: nothing to animate
  refresh(); // the tree again, with (or without) the scores of every node
});

// colouring by combination share: the tree already holds each node's figures
const COMBINATION_LEGEND =
  `share of the concept combinations asked: none or 10^-${SHARE_DECADES} → 100% (log scale)`;
function colourByCombinations(on) {
  state.byCombinations = on;
  document.getElementById("by-combinations").checked = on;
  document.getElementById("chart").setAttribute("data-colour", on ? "combinations" : "");
  if (on) {
    const score = document.getElementById("by-score");
    if (score && score.checked) score.click(); // one colouring at a time
    document.querySelector("#legend-ramp .text").textContent = COMBINATION_LEGEND;
  } else if (!state.byScore) {
    document.querySelector("#legend-ramp .text").textContent = LEGEND.coverage;
  }
  if (state.focus) render();
}
document.getElementById("by-combinations").addEventListener("change", (event) => {
  colourByCombinations(event.target.checked);
});
document.getElementById("by-score").addEventListener("change", (event) => {
  if (event.target.checked && state.byCombinations) colourByCombinations(false);
});
refresh();
