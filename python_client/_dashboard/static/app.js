// The Turnout dashboard: polls the dashboard server's JSON API and draws the
// instance; every change goes through a confirmation that states it.
"use strict";

const POLL_MS = 1000;
const LOG_POLL_MS = 1000;
const LOG_LINES = 100;     // lines of the first read
const LOG_KEEP = 1000;     // lines the view keeps as it follows
const SVG = "http://www.w3.org/2000/svg";
const COLORS = 6;

const state = {
  data: null,          // the last overview
  rendered: {},        // section -> JSON last drawn (redraw only on change)
  lastOk: null,        // Date of the last good poll
  log: null,           // replica whose log is shown
  pending: null,       // {text, path, body, done} of the change being confirmed
  traffic: null,       // {endpoint, backends: [..], weights: [..]} being edited
};

// ---- DOM helpers ------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

const $ = (id) => document.getElementById(id);
// Ids for elements made from names: the same name always gets the same id.
const idFor = (...parts) => parts.map((p) => encodeURIComponent(p).replace(/%/g, "_")).join("--");

function color(index) {
  return `var(--c${index % COLORS})`;
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const value = seconds * 1000;
  return value < 10 ? `${value.toFixed(2)} ms` : `${value.toFixed(0)} ms`;
}

function pct(x) {
  return `${(x * 100).toFixed(x * 100 % 1 ? 1 : 0)}%`;
}

function weights(traffic) {
  return Object.entries(traffic).map(([b, w]) => `${b} ${w.toFixed(2)}`).join(", ") || "none";
}

// ---- talking to the dashboard server ------------------------------------------

class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

async function api(path, body) {
  let reply;
  try {
    reply = await fetch(path, body === undefined ? {} : {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
  } catch (exc) {
    throw new ApiError(0, "Unreachable",
      "the dashboard server does not answer (is `turnout dashboard` still running?)");
  }
  let answer = null;
  try { answer = await reply.json(); } catch (exc) { answer = null; }
  if (!reply.ok) {
    const kind = answer && answer.error ? answer.error : `HTTP ${reply.status}`;
    const message = answer && answer.message ? answer.message : reply.statusText;
    throw new ApiError(reply.status, kind, message);
  }
  return answer;
}

function describeFailure(exc) {
  if (exc.status === 401) return "This page's session is not valid: open the URL that " +
    "`turnout dashboard` printed.";
  if (exc.status === 503) return `The controller does not answer: ${exc.message}`;
  return `${exc.kind}: ${exc.message}`;
}

// ---- polling --------------------------------------------------------------------

async function poll() {
  try {
    const data = await api("/api/overview");
    state.data = data;
    state.lastOk = new Date();
    $("problem").hidden = true;
    $("main").classList.remove("stale");
    draw(data);
  } catch (exc) {
    const seen = state.lastOk ? ` Showing what was seen at ${state.lastOk.toLocaleTimeString()}.`
      : "";
    $("problem").textContent = `${describeFailure(exc)}${seen} Retrying every second.`;
    $("problem").hidden = false;
    if (state.data) $("main").classList.add("stale");
    else {
      for (const id of ["endpoints", "backends"]) {
        $(id).replaceChildren(h("p", {class: "empty", text: "Nothing to show until the " +
          "instance answers."}));
      }
      state.rendered = {};
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function draw(data) {
  $("instance").replaceChildren(h("span", {}, "Controller ",
    h("code", {text: data.instance.controller}),
    data.instance.http ? [" · HTTP ", h("code", {text: data.instance.http})] : []));
  $("updated").textContent = `Updated ${new Date(data.instance.time * 1000).toLocaleTimeString()}`;
  redraw("endpoints", {e: data.endpoints, h: data.history}, () => endpointsView(data));
  redraw("backends", data.backends, () => backendsView(data));
}

// Replaces a section only when what it shows changed, and gives the focus
// back to the element (same id) that had it.
function redraw(id, shown, make) {
  const key = JSON.stringify(shown);
  if (state.rendered[id] === key) return;
  state.rendered[id] = key;
  const focused = document.activeElement && document.activeElement.id;
  $(id).replaceChildren(...make());
  if (focused && $(focused) && $(id).contains($(focused))) $(focused).focus();
}

// ---- endpoints ------------------------------------------------------------------

function endpointsView(data) {
  if (!data.endpoints.length) {
    return [h("p", {class: "empty"}, "No endpoints yet. Create one with ",
      h("code", {text: "serve.create_endpoint(name, backend, route=\"/path\")"}),
      " or ", h("code", {text: "turnout deploy"}), ".")];
  }
  const backendsOrder = data.backends.map((b) => b.tag);
  return data.endpoints.map((e) => endpointCard(e, data.history[e.name] || [], backendsOrder,
    data.instance.sample_s));
}

function endpointCard(e, points, order, sampleS) {
  const traffic = Object.entries(e.traffic);
  const colorOf = (b) => color(Math.max(0, order.indexOf(b)));
  const titleId = idFor("endpoint", e.name);
  const r = e.recent;
  return h("article", {class: "card", "aria-labelledby": titleId, "data-endpoint": e.name},
    h("header", {class: "row"},
      h("h3", {id: titleId, text: e.name}),
      h("span", {class: "muted"}, e.route ? [h("code", {text: e.route}), " "] : "handles only ",
        e.methods.join(", "))),
    h("div", {class: "row"},
      h("strong", {text: "Traffic"}),
      h("span", {class: "traffic-text"}, traffic.map(([b, w], i) =>
        [i ? " · " : "", swatch(colorOf(b)), `${b} ${pct(w)}`])),
      h("button", {type: "button", id: idFor("edit-traffic", e.name),
        "aria-label": `Edit traffic of ${e.name}`, onclick: () => openTraffic(e)}, "Edit traffic…")),
    splitBar(traffic, colorOf),
    h("p", {class: "muted summary"},
      `Last ${r.window_s || 60} s: ${r.requests || 0} requests, ${r.errors || 0} errors · ` +
      `p50 ${ms(r.p50)} · p95 ${ms(r.p95)} · p99 ${ms(r.p99)}`),
    e.rollout ? rolloutView(e) : null,
    shadowsView(e),
    h("div", {class: "grid"},
      chart(`Requests and errors of ${e.name}`, points, sampleS, [
        {key: "requests_per_s", label: "requests/s", color: "var(--c0)"},
        {key: "errors_per_s", label: "errors/s", color: "var(--bad)"},
      ], (v) => v.toFixed(1)),
      chart(`Latency of ${e.name}`, points, sampleS, [
        {key: "p50", label: "p50", color: "var(--c2)", scale: 1000},
        {key: "p95", label: "p95", color: "var(--c1)", scale: 1000},
        {key: "p99", label: "p99", color: "var(--c4)", scale: 1000},
      ], (v) => `${v.toFixed(v < 10 ? 1 : 0)} ms`)));
}

// ---- rollouts -------------------------------------------------------------------

const ROLLOUT_ENDED = ["succeeded", "rolled_back", "aborted"];

// Four significant digits, without trailing zeros.
const figure = (x) => String(Number(Number(x).toPrecision(4)));

function stepText(ro) {
  if (ro.state === "shadow") return "shadow phase";
  if (!ro.step) return "before its first step";
  return `step ${ro.step} of ${ro.steps.length} (${pct(ro.steps[ro.step - 1])} to ` +
    `${ro.to_backend})`;
}

function rolloutView(e) {
  const ro = e.rollout;
  const ended = ROLLOUT_ENDED.includes(ro.state);
  const where = `the rollout of ${e.name} from ${ro.from_backend} to ${ro.to_backend}`;
  const at = stepText(ro);
  const button = (action, label, text, done) => h("button", {type: "button",
    id: idFor(`rollout-${action}`, e.name), "aria-label": `${label} the rollout of ${e.name}`,
    onclick: () => confirmChange(text, `/api/rollout/${action}`, {endpoint: e.name}, done)},
  label);
  const buttons = [];
  if (!ended && ro.state !== "paused") {
    buttons.push(button("pause", "Pause", `Pause ${where} at ${at}: the traffic stays ` +
      `${weights(e.traffic)} until it is resumed.`, `Rollout of ${e.name} paused.`));
  }
  if (ro.state === "paused") {
    buttons.push(button("resume", "Resume", `Resume ${where} at ${at}: the step is timed ` +
      `again from the start (${ro.step_s} s).`, `Rollout of ${e.name} resumed.`));
  }
  if (!ended) {
    buttons.push(button("abort", "Abort", `Abort ${where}: all traffic goes back to ` +
      `${ro.from_backend} (now ${weights(e.traffic)}).`, `Rollout of ${e.name} aborted.`));
  }
  const time = (unix) => new Date(unix * 1000).toLocaleTimeString();
  const windows = [["new", ro.new], ["old", ro.old]].filter(([, w]) => w);
  return h("div", {class: "rollout", role: "group", "aria-label": `Rollout of ${e.name}`},
    h("div", {class: "row"},
      h("strong", {text: ended ? "Last rollout" : "Rollout"}),
      h("span", {}, `${ro.from_backend} → ${ro.to_backend}`),
      h("span", {class: `state rollout-${ro.state}`, "data-rollout-state": ro.state,
        text: ro.state.replace("_", " ")}),
      h("span", {}, ended ? `ended ${ro.ended_at ? time(ro.ended_at) : ""}` :
        `${at}, ${ro.step_s} s each (steps ${ro.steps.map(pct).join(", ")})`),
      ...buttons),
    ro.verdict ? h("p", {class: "verdict", text: ro.verdict}) : null,
    ro.evidence.length ? h("ul", {class: "evidence", "aria-label": "Evidence"},
      ro.evidence.map((ev) => h("li", {text: `${ev.bound}: ${figure(ev.value)} ` +
        `(limit ${figure(ev.limit)})`}))) :
      null,
    windows.length ? h("table", {"aria-label": `Last window judged of ${e.name}'s rollout`},
      h("thead", {}, h("tr", {}, [`Over ${Math.round(windows[0][1].window_s)} s`, "Backend",
        "Requests", "Errors", "p95", "p99"].map((t) => h("th", {scope: "col", text: t})))),
      h("tbody", {}, windows.map(([side, w]) => h("tr", {"data-window": side},
        h("td", {text: side}), h("td", {text: w.backend}), h("td", {text: w.requests}),
        h("td", {text: w.errors}), h("td", {text: ms(w.p95)}), h("td", {text: ms(w.p99)}))))) :
      null);
}

function splitBar(traffic, colorOf) {
  const bar = h("div", {class: "split", role: "img",
    "aria-label": `Traffic split: ${traffic.map(([b, w]) => `${b} ${pct(w)}`).join(", ")}`});
  for (const [b, w] of traffic) {
    const part = h("span", {title: `${b} ${pct(w)}`});
    part.style.width = `${w * 100}%`;
    part.style.background = colorOf(b);
    bar.append(part);
  }
  return bar;
}

function swatch(background) {
  const node = h("span", {class: "swatch", "aria-hidden": "true"});
  node.style.background = background;
  return node;
}

function shadowsView(e) {
  if (!e.shadows.length) return h("p", {class: "muted"}, "No shadows.");
  return h("table", {"aria-label": `Shadows of ${e.name}`},
    h("thead", {}, h("tr", {}, ["Shadow backend", "Share", "Sent", "Matched", "Differed",
      "Failed", "Match rate", ""].map((t) => h("th", {scope: "col", text: t})))),
    h("tbody", {}, e.shadows.map((sh) => {
      const compared = (sh.matched || 0) + (sh.differed || 0);
      return h("tr", {},
        h("td", {text: sh.backend}), h("td", {text: pct(sh.proportion)}),
        h("td", {text: sh.sent || 0}), h("td", {text: sh.matched || 0}),
        h("td", {text: sh.differed || 0}), h("td", {text: sh.failed || 0}),
        h("td", {text: compared ? pct((sh.matched || 0) / compared) : "–"}),
        h("td", {}, h("button", {type: "button", id: idFor("remove-shadow", e.name, sh.backend),
          "aria-label": `Remove shadow ${sh.backend} of ${e.name}`,
          onclick: () => confirmChange(
            `Stop copying ${pct(sh.proportion)} of ${e.name}'s requests to ${sh.backend} ` +
            `(remove the shadow).`,
            "/api/shadow/remove", {endpoint: e.name, backend: sh.backend},
            `Shadow ${sh.backend} of ${e.name} removed.`)}, "Remove")));
    })));
}

// ---- charts (plain SVG) ----------------------------------------------------------

function chart(title, points, sampleS, series, format) {
  const W = 420, H = 150, L = 52, R = 8, T = 10, B = 22;
  const now = points.length ? points[points.length - 1].t : 0;
  // From the first point (the dashboard's start) to now: 1 to 10 minutes.
  const span = points.length ? Math.min(600, Math.max(60, now - points[0].t)) : 600;
  const spanText = span >= 120 ? `−${Math.round(span / 60)} min` : `−${Math.round(span)} s`;
  let max = 0;
  for (const p of points) for (const sr of series) {
    const v = p[sr.key];
    if (v !== null && v !== undefined) max = Math.max(max, v * (sr.scale || 1));
  }
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => L + (W - L - R) * (1 - (now - t) / span);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const latest = points.length ? points[points.length - 1] : null;
  const summary = latest ? series.map((sr) => {
    const v = latest[sr.key];
    return `${sr.label} ${v === null || v === undefined ? "none" : format(v * (sr.scale || 1))}`;
  }).join(", ") : "no points yet";
  const svg = s("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `${title}, last ${spanText.slice(1)}; latest: ${summary}`});
  svg.append(s("title", {}, title));
  svg.append(s("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}));
  svg.append(s("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}));
  svg.append(s("text", {x: L - 4, y: T + 8, "text-anchor": "end"}, format(max)));
  svg.append(s("text", {x: L - 4, y: H - B, "text-anchor": "end"}, format(0)));
  svg.append(s("text", {x: L, y: H - 6}, spanText));
  svg.append(s("text", {x: W - R, y: H - 6, "text-anchor": "end"}, "now"));
  if (points.length < 2) {
    svg.append(s("text", {x: (W + L) / 2, y: H / 2, "text-anchor": "middle"},
      `Collecting: a point every ${sampleS} s`));
  }
  for (const sr of series) {
    let d = "";
    let pen = "M";
    for (const p of points) {
      const v = p[sr.key];
      if (v === null || v === undefined) { pen = "M"; continue; }
      d += `${pen}${x(p.t).toFixed(1)},${y(v * (sr.scale || 1)).toFixed(1)} `;
      pen = "L";
    }
    if (d) {
      svg.append(s("path", {d, fill: "none", stroke: sr.color, "stroke-width": 2,
        "data-series": sr.key}));
    }
    // The latest value as a dot, so that a line of one point shows too.
    const last = latest && latest[sr.key];
    if (last !== null && last !== undefined && last !== false) {
      svg.append(s("circle", {cx: x(latest.t).toFixed(1), cy: y(last * (sr.scale || 1)).toFixed(1),
        r: 3, fill: sr.color}));
    }
  }
  const legend = h("p", {class: "legend"},
    series.map((sr, i) => [i ? " " : "", swatch(sr.color), sr.label]), ` · latest: ${summary}`);
  return h("figure", {class: "chart-box"}, svg, legend);
}

// ---- backends and replicas --------------------------------------------------------

function replicaState(r) {
  if ((r.state === "FAILED" || r.state === "STARTING") && r.restarts > 0) return "restarting";
  return r.state.toLowerCase();
}

function backendsView(data) {
  if (!data.backends.length) {
    return [h("p", {class: "empty"}, "No backends yet. Create one with ",
      h("code", {text: "serve.create_backend(tag, func_or_class)"}), ".")];
  }
  return data.backends.map((b) => {
    const titleId = idFor("backend", b.tag);
    const config = Object.entries(b.config).filter(([, v]) => v !== null && v !== undefined);
    return h("article", {class: "card", "aria-labelledby": titleId, "data-backend": b.tag},
      h("header", {class: "row"},
        h("h3", {id: titleId, text: b.tag}),
        h("span", {class: "muted"}, `${b.replicas.filter((r) => r.state === "RUNNING").length}` +
          ` of ${b.autoscaling ? b.autoscaling.desired_replicas : b.config.num_replicas} ` +
          `replicas running${b.autoscaling ? " (autoscaled)" : ""}`),
        h("button", {type: "button", id: idFor("scale", b.tag), "aria-label": `Scale ${b.tag}`,
          onclick: () => openScale(b)}, "Scale…")),
      b.autoscaling ? autoscalingView(b) : null,
      h("details", {}, h("summary", {text: "Config"}),
        h("dl", {class: "config"}, config.map(([k, v]) => [h("dt", {text: k}),
          h("dd", {text: typeof v === "object" ? JSON.stringify(v) : String(v)})]))),
      b.replicas.length ? replicasTable(b) :
        h("p", {class: "empty", text: "No replicas (num_replicas is 0)."}));
  });
}

// What the autoscaler was told, what it decided last and why.
function autoscalingView(b) {
  const a = b.autoscaling;
  const p = a.policy;
  const decided = a.last_decision ?
    [h("strong", {text: `scaled ${a.last_decision}`}),
      ` at ${new Date(a.last_decision_time * 1000).toLocaleTimeString()}: `,
    h("span", {class: "reason", text: a.last_reason || ""})] :
    ["none yet (it starts at ", String(p.initial_replicas === null ? p.min_replicas :
      p.initial_replicas), ")"];
  return h("div", {class: "autoscaling", role: "group", "aria-label": `Autoscaling of ${b.tag}`},
    h("p", {},
      h("strong", {text: "Autoscaling"}),
      ` min ${p.min_replicas} · max ${p.max_replicas} · target ${p.target_ongoing_requests} ` +
      "requests in flight per replica · delays up " +
      `${p.upscale_delay_s} s, down ${p.downscale_delay_s} s, over ${p.look_back_period_s} s`),
    h("p", {},
      `Desired ${a.desired_replicas} · running ${a.running_replicas} · load ` +
      `${a.load.toFixed(2)} requests, asks for ${a.wanted_replicas}`),
    h("p", {}, "Last decision: ", decided));
}

function replicasTable(b) {
  return h("table", {"aria-label": `Replicas of ${b.tag}`},
    h("thead", {}, h("tr", {}, ["Replica", "State", "Node", "PID", "In flight", "Restarts",
      "Last error", "Log"].map((t) => h("th", {scope: "col", text: t})))),
    h("tbody", {}, b.replicas.map((r) => {
      const label = replicaState(r);
      return h("tr", {"data-replica": r.id},
        h("td", {}, h("code", {text: r.id})),
        h("td", {}, h("span", {class: `state ${label}`, "data-state": label, text: label})),
        h("td", {text: r.node || "this machine"}),
        h("td", {text: r.pid || "–"}),
        h("td", {text: r.in_flight === null ? "–" : r.in_flight}),
        h("td", {text: r.restarts}),
        h("td", {class: "error-text", text: r.error || r.last_error || ""}),
        h("td", {}, h("button", {type: "button", id: idFor("log", r.id),
          "aria-label": `Show log of ${r.id}`, onclick: () => showLog(r.id)}, "Log")));
    })));
}

// ---- the log --------------------------------------------------------------------

async function showLog(replica) {
  state.log = {replica, offset: null, lines: []};
  $("log-section").hidden = false;
  $("log-title").textContent = `Log of ${replica}`;
  $("log-path").textContent = "";
  $("log").textContent = "Loading…";
  await refreshLog(true);
  $("log").focus();
}

// The first read takes the last lines; each next one asks from where the
// previous one ended (next_offset), so only new lines travel.
async function refreshLog(first) {
  const shown = state.log;
  if (!shown || (shown.busy && !first)) return;
  shown.busy = true;
  const from = shown.offset === null ? "" : `&offset=${shown.offset}`;
  try {
    const answer = await api(`/api/log?replica=${encodeURIComponent(shown.replica)}` +
      `&lines=${LOG_LINES}${from}`);
    if (state.log !== shown) return;
    if (shown.offset !== null && shown.path && answer.path && answer.path !== shown.path) {
      // A new process of the replica, with a file of its own: from its tail.
      shown.path = answer.path;
      shown.offset = null;
      shown.lines = [];
      shown.busy = false;
      await refreshLog(true);
      return;
    }
    shown.path = answer.path || shown.path;
    $("log-path").textContent = answer.path ? `${answer.path} · read by the controller` : "";
    const pre = $("log");
    if (answer.note) {
      shown.offset = null;
      shown.lines = [];
      pre.textContent = answer.note;
      return;
    }
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    shown.lines = (answer.reset ? answer.lines : shown.lines.concat(answer.lines))
      .slice(-LOG_KEEP);
    const grew = shown.offset === null || answer.lines.length || answer.reset;
    shown.offset = answer.next_offset;
    if (!grew && pre.textContent !== "Loading…") return;
    pre.textContent = shown.lines.length ? shown.lines.join("\n") : "The log is empty so far.";
    if (first || atEnd) pre.scrollTop = pre.scrollHeight;
  } catch (exc) {
    if (state.log === shown) $("log").textContent = describeFailure(exc);
  } finally {
    shown.busy = false;
  }
}

function closeLog() {
  const replica = state.log && state.log.replica;
  state.log = null;
  $("log-section").hidden = true;
  if (replica && $(idFor("log", replica))) $(idFor("log", replica)).focus();
}

// ---- changes --------------------------------------------------------------------

function confirmChange(text, path, body, done) {
  state.pending = {path, body, done};
  $("confirm-text").textContent = text;
  $("confirm-error").hidden = true;
  $("confirm-apply").disabled = false;
  $("confirm-apply").textContent = "Apply";
  $("confirm-dialog").showModal();
}

async function applyChange() {
  const pending = state.pending;
  if (!pending) return;
  $("confirm-apply").disabled = true;
  $("confirm-apply").textContent = "Applying…";
  try {
    await api(pending.path, pending.body);
    state.pending = null;
    $("confirm-dialog").close();
    for (const id of ["traffic-dialog", "scale-dialog"]) if ($(id).open) $(id).close();
    notice(pending.done);
    state.rendered = {};
  } catch (exc) {
    // The API's own words: the change was refused, nothing changed.
    $("confirm-error").textContent = `Not applied. ${describeFailure(exc)}`;
    $("confirm-error").hidden = false;
    $("confirm-apply").disabled = false;
    $("confirm-apply").textContent = "Apply";
  }
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { $("notice").hidden = true; }, 8000);
}

// ---- traffic editor ---------------------------------------------------------------

const round = (x) => Math.round(x * 10000) / 10000;

// The list is redrawn while a dialog is open: the button that opened it is
// found again by its id when the dialog closes.
function rememberOpener() {
  state.opener = document.activeElement && document.activeElement.id;
}

function refocusOpener() {
  const opener = state.opener && $(state.opener);
  if (opener) opener.focus();
}

function openTraffic(e) {
  rememberOpener();
  const tags = state.data.backends.map((b) => b.tag);
  const backends = [...Object.keys(e.traffic), ...tags.filter((t) => !(t in e.traffic))];
  state.traffic = {endpoint: e.name, before: e.traffic, backends,
    weights: backends.map((b) => e.traffic[b] || 0)};
  $("traffic-title").textContent = `Traffic of ${e.name}`;
  const rows = backends.map((b, i) => {
    const sliderId = idFor("weight-slider", b);
    const numberId = idFor("weight-number", b);
    return h("div", {class: "weight"},
      h("label", {for: sliderId, text: b}),
      h("input", {type: "range", id: sliderId, min: 0, max: 100, step: 1,
        "aria-label": `Share of ${b} in percent`, disabled: backends.length < 2,
        oninput: (ev) => slide(i, Number(ev.target.value) / 100)}),
      h("input", {type: "number", id: numberId, min: 0, max: 1, step: 0.01,
        "aria-label": `Weight of ${b}`, oninput: (ev) => type(i, ev.target.value)}));
  });
  $("traffic-rows").replaceChildren(...rows);
  syncTraffic(-1);
  $("traffic-dialog").showModal();
}

// A slider keeps the sum at 1: what it takes or gives goes to the others in
// proportion to their weights (evenly when they are all 0).
function slide(index, value) {
  const t = state.traffic;
  const others = t.weights.reduce((sum, w, i) => (i === index ? sum : sum + w), 0);
  const rest = 1 - value;
  const n = t.weights.length - 1;
  t.weights = t.weights.map((w, i) => {
    if (i === index) return value;
    return others > 0 ? (w * rest) / others : rest / n;
  }).map(round);
  // Rounding's remainder goes to the largest other weight: the API wants the
  // sum within 1e-6 of 1.
  let largest = index === 0 ? 1 : 0;
  t.weights.forEach((w, i) => {
    if (i !== index && w > t.weights[largest]) largest = i;
  });
  const rounded = t.weights.reduce((sum, w, i) => (i === largest ? sum : sum + w), 0);
  t.weights[largest] = Math.max(0, round(1 - rounded));
  syncTraffic(index);
}

// A number field sets one weight exactly and leaves the others: the sum
// shows whether the API will take it.
function type(index, text) {
  const value = Number(text);
  state.traffic.weights[index] = Number.isFinite(value) ? value : NaN;
  syncTraffic(index, true);
}

function syncTraffic(changed, typed) {
  const t = state.traffic;
  t.backends.forEach((b, i) => {
    const slider = $(idFor("weight-slider", b));
    const number = $(idFor("weight-number", b));
    const w = t.weights[i];
    if (Number.isFinite(w)) slider.value = String(Math.round(w * 100));
    if (!(typed && i === changed)) number.value = Number.isFinite(w) ? String(round(w)) : "";
  });
  const sum = t.weights.reduce((a, b) => a + b, 0);
  const line = $("traffic-sum");
  line.textContent = Number.isFinite(sum) ? `Sum of weights: ${round(sum)}` :
    "Every weight must be a number.";
  line.classList.toggle("bad-sum", !(Math.abs(sum - 1) < 1e-6));
  if (Number.isFinite(sum) && Math.abs(sum - 1) >= 1e-6) {
    line.textContent += " (the API takes only weights that sum to 1)";
  }
}

function reviewTraffic() {
  const t = state.traffic;
  const traffic = {};
  t.backends.forEach((b, i) => {
    if (t.weights[i] !== 0) traffic[b] = t.weights[i];
  });
  confirmChange(`Set the traffic of ${t.endpoint} to ${weights(traffic)} ` +
    `(now ${weights(t.before)}).`, "/api/traffic", {endpoint: t.endpoint, traffic},
    `Traffic of ${t.endpoint} set to ${weights(traffic)}.`);
}

// ---- scaling ------------------------------------------------------------------------

function openScale(b) {
  rememberOpener();
  state.scale = b;
  $("scale-title").textContent = `Scale ${b.tag}`;
  $("scale-count").value = String(b.config.num_replicas);
  $("scale-dialog").showModal();
  $("scale-count").select();
}

function reviewScale() {
  const b = state.scale;
  const text = $("scale-count").value.trim();
  const count = /^\d+$/.test(text) ? Number(text) : text;
  // A fixed count replaces the autoscaling rules (update_backend_config).
  const off = b.autoscaling ? ` This turns autoscaling off (it keeps ${b.autoscaling.policy
    .min_replicas}..${b.autoscaling.policy.max_replicas} replicas now).` : "";
  confirmChange(`Scale ${b.tag} from ${b.config.num_replicas} to ${count} replicas ` +
    `(the dialog waits until they run).${off}`, "/api/scale", {backend: b.tag, num_replicas: count},
    `${b.tag} scaled to ${count} replicas.`);
}

// ---- start ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("traffic-review").addEventListener("click", reviewTraffic);
  $("traffic-cancel").addEventListener("click", () => $("traffic-dialog").close());
  $("scale-review").addEventListener("click", reviewScale);
  $("scale-cancel").addEventListener("click", () => $("scale-dialog").close());
  $("scale-count").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") reviewScale();
  });
  $("confirm-apply").addEventListener("click", applyChange);
  $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close());
  $("confirm-dialog").addEventListener("close", () => { state.pending = null; });
  $("traffic-dialog").addEventListener("close", refocusOpener);
  $("scale-dialog").addEventListener("close", refocusOpener);
  $("log-close").addEventListener("click", closeLog);
  setInterval(() => refreshLog(false), LOG_POLL_MS);
  poll();
});
