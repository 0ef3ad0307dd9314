"use strict";
// duogate status page: one EventSource (/events) keeps everything live; no polling.

const MAX_LOG_LINES = 200;
const MAX_RESULTS = 20;
const SVG = "http://www.w3.org/2000/svg";

const view = {
  nodes: new Map(),       // device -> row as the server sent it
  ages: new Map(),        // device -> "last seen" text (sent apart: it changes every second)
  selected: null,         // device whose chart is shown
  points: [],             // [ts, rssi, snr] for the selected device
  windowS: 3600,
  bucketS: 15,
  skewS: 0,               // server clock minus this browser's clock
  requests: new Map(),    // command request id -> <li>
  deviceList: "",
};

const $ = (id) => document.getElementById(id);

function make(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function number(value, digits = 1) {
  return value === null || value === undefined ? "-" : value.toFixed(digits);
}

function serverNow() {
  return Date.now() / 1000 + view.skewS;
}

// --- status cards ---

function renderStatus(status) {
  view.skewS = status.now - Date.now() / 1000;
  $("uptime").textContent = "up " + status.uptime;

  const ups = $("upstreams");
  ups.replaceChildren();
  if (!status.upstreams.length) ups.append(make("li", "none", "muted"));
  for (const up of status.upstreams) {
    const li = make("li");
    li.append(make("b", up.name + " "),
      make("span", up.connected ? "connected" : "disconnected", up.connected ? "ok" : "bad"),
      make("span", " for " + up.for, "muted"));
    if (up.last_error) li.append(make("div", "last error: " + up.last_error, "small muted"));
    ups.append(li);
  }

  const outbox = status.outbox;
  $("outbox-depth").textContent = outbox ? outbox.depth : "?";
  $("outbox-age").textContent = !outbox ? "unavailable"
    : outbox.oldest_age_s === null ? "empty" : "oldest " + outbox.oldest_age_s.toFixed(1) + " s";

  $("radio").textContent = status.radio_text;
  const duty = $("duty");
  duty.replaceChildren();
  for (const [band, used] of Object.entries(status.duty_cycle || {}).sort()) {
    const bar = make("progress");
    bar.max = 1;
    bar.value = Math.min(1, used);
    duty.append(make("span", band + " "), bar, " ");
  }
  duty.append(make("div", "duty cycle " + status.duty_cycle_text));

  const f = status.frames;
  $("traffic").textContent = `${f.received} received, ${f.sent} sent, ${f.rejected} rejected` +
    ` · joins ${status.joins.accepted || 0} accepted, ${status.joins.refused || 0} refused`;
}

// --- nodes table and the command form's device list ---

function renderNodes() {
  const body = $("nodes").tBodies[0];
  const rows = document.createDocumentFragment();
  const devices = [...view.nodes.keys()].sort();
  for (const device of devices) {
    const node = view.nodes.get(device);
    const tr = make("tr");
    tr.dataset.device = device;
    if (device === view.selected) tr.className = "selected";
    const data = node.last_data ? JSON.stringify(node.last_data) : "-";
    const cells = [
      [node.device], [node.kind, "opt"], [node.address_text, "opt"], [view.ages.get(device) || "-"],
      [number(node.rssi), "num"], [number(node.snr), "num"], [data, "data"],
      [node.pending_commands, "num"],
    ];
    for (const [text, cls] of cells) tr.append(make("td", text, cls));
    tr.lastChild.previousSibling.title = data;
    rows.append(tr);
  }
  body.replaceChildren(rows);
  $("node-count").textContent = devices.length ? `(${devices.length})` : "";

  const list = devices.join("\n");
  if (list !== view.deviceList) {
    view.deviceList = list;
    const select = $("cmd-device");
    const chosen = select.value;
    select.replaceChildren(...devices.map((d) => new Option(d, d, false, d === chosen)));
  }
  if (view.selected === null && devices.length) selectNode(devices[0]);
}

function selectNode(device) {
  view.selected = device;
  view.points = [];
  $("chart-device").textContent = device;
  for (const tr of $("nodes").tBodies[0].rows) {
    tr.className = tr.dataset.device === device ? "selected" : "";
  }
  fetch("api/history/" + encodeURIComponent(device))
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(r.statusText))))
    .then((h) => {
      if (view.selected !== device) return;
      view.points = h.points.concat(view.points.filter((p) => p[0] > lastTs(h.points)));
      drawChart();
    })
    .catch(() => drawChart());
}

function lastTs(points) {
  return points.length ? points[points.length - 1][0] : 0;
}

// --- signal chart (inline SVG, same 15 s buckets as the server) ---

function addPoint(ts, rssi, snr) {
  const last = view.points[view.points.length - 1];
  const bucket = Math.floor(ts / view.bucketS);
  if (last && Math.floor(last[0] / view.bucketS) === bucket) {
    last.n = (last.n || 1) + 1;
    if (rssi !== null) last[1] = last[1] === null ? rssi : last[1] + (rssi - last[1]) / last.n;
    if (snr !== null) last[2] = last[2] === null ? snr : last[2] + (snr - last[2]) / last.n;
    last[0] = Math.max(last[0], ts);
  } else if (!last || ts > last[0]) {
    view.points.push([ts, rssi, snr]);
  }
}

function drawChart() {
  const now = serverNow();
  const since = now - view.windowS;
  view.points = view.points.filter((p) => p[0] >= since);
  const box = $("chart");
  if (!view.selected) return;
  // Drawn at the box's own width so that text stays at its CSS size.
  const g = { W: Math.max(280, Math.round(box.clientWidth)), H: 190, L: 34, R: 6 };
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${g.W} ${g.H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "RSSI and SNR of " + view.selected + " over the last hour");
  const x = (ts) => g.L + ((ts - since) / view.windowS) * (g.W - g.L - g.R);
  panel(svg, g, 1, "RSSI dBm", "rssi", 8, 78, x);
  panel(svg, g, 2, "SNR dB", "snr", 100, 170, x);
  for (const [ts, label] of [[since, "-60 min"], [since + view.windowS / 2, "-30"], [now, "now"]]) {
    const t = svgText(svg, x(ts), g.H - 4, label);
    t.setAttribute("text-anchor", ts === since ? "start" : ts === now ? "end" : "middle");
  }
  box.replaceChildren(svg);
}

// One series in the band top..bottom, scaled to its own range.
function panel(svg, g, index, label, cls, top, bottom, x) {
  const values = view.points.filter((p) => p[index] !== null);
  const right = g.W - g.R;
  svgLine(svg, g.L, bottom, right, bottom);
  svgText(svg, g.L + 2, top + 8, label + (values.length ? "" : ": no samples"));
  if (!values.length) return;
  let lo = Math.min(...values.map((p) => p[index]));
  let hi = Math.max(...values.map((p) => p[index]));
  if (hi - lo < 2) { lo -= 1; hi += 1; }
  const plotTop = top + 14; // below the label line
  const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - plotTop);
  svgText(svg, g.L - 4, plotTop + 4, hi.toFixed(0)).setAttribute("text-anchor", "end");
  svgText(svg, g.L - 4, bottom, lo.toFixed(0)).setAttribute("text-anchor", "end");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("class", cls);
  line.setAttribute("points", values.map((p) => `${x(p[0]).toFixed(1)},${y(p[index]).toFixed(1)}`).join(" "));
  svg.append(line);
  const last = values[values.length - 1];
  svgText(svg, right, top + 8, "last " + last[index].toFixed(1)).setAttribute("text-anchor", "end");
}

function svgLine(svg, x1, y1, x2, y2) {
  const line = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) line.setAttribute(k, v);
  line.setAttribute("class", "axis");
  svg.append(line);
}

function svgText(svg, xPos, yPos, text) {
  const node = document.createElementNS(SVG, "text");
  node.setAttribute("x", xPos);
  node.setAttribute("y", yPos);
  node.textContent = text;
  svg.append(node);
  return node;
}

// --- live frame log ---

function showFrame(frame) {
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  const line = make("div", frame.text,
    frame.type.startsWith("rejected") ? "rejected" : frame.direction === "down" ? "down" : "");
  log.append(line);
  while (log.childElementCount > MAX_LOG_LINES) log.firstChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

// A sample the server added to a device's signal history (LoRa frames, BLE adverts).
function showSignal(sample) {
  if (sample.device === view.selected) addPoint(sample.ts, sample.rssi, sample.snr);
}

// --- commands ---

function showResult(command) {
  let li = view.requests.get(command.request);
  if (!li) {
    li = make("li");
    li.dataset.request = command.request;
    li.append(make("span", `${command.action} → ${command.device}: `), make("span", "", "status"),
      make("span", "", "muted small"));
    view.requests.set(command.request, li);
    $("results").prepend(li);
    while ($("results").childElementCount > MAX_RESULTS) {
      view.requests.delete($("results").lastChild.dataset.request);
      $("results").lastChild.remove();
    }
  }
  const [, status, detail] = li.children;
  status.textContent = command.status;
  status.className = "status " + command.status;
  const r = command.result;
  detail.textContent = r ? ` (${r.id || "no id"}${r.detail ? ": " + r.detail : ""})` : "";
}

$("command").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("cmd-error");
  error.textContent = "";
  const ttl = $("cmd-ttl").value.trim();
  const body = {
    device: $("cmd-device").value,
    action: $("cmd-action").value.trim(),
    params: $("cmd-params").value.trim() || null,
    ttl_s: ttl === "" ? null : Number(ttl),
  };
  try {
    const response = await fetch("api/command", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) {
      error.textContent = answer.error || response.statusText;
      return;
    }
    if (!view.requests.has(answer.request) || answer.status !== "pending") showResult(answer);
  } catch (err) {
    error.textContent = "cannot reach the gateway: " + err.message;
  }
});

$("nodes").tBodies[0].addEventListener("click", (event) => {
  const tr = event.target.closest("tr");
  if (tr && tr.dataset.device) selectNode(tr.dataset.device);
});

// --- the live feed ---

function refreshPending() {
  for (const [request, li] of view.requests) {
    if (li.children[1].textContent !== "pending") continue;
    fetch("api/command/" + request).then((r) => (r.ok ? r.json() : null))
      .then((c) => c && showResult(c)).catch(() => {});
  }
}

function setLive(ok, text) {
  const pill = $("live");
  pill.textContent = text;
  pill.className = "pill " + (ok ? "ok" : "bad");
}

function connect() {
  const source = new EventSource("events");
  const on = (name, handler) => source.addEventListener(name, (e) => handler(JSON.parse(e.data)));
  source.onopen = () => { setLive(true, "live"); refreshPending(); };
  source.onerror = () => {
    setLive(false, "reconnecting");
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
  on("hello", (hello) => {
    view.windowS = hello.history_window_s;
    view.bucketS = hello.history_bucket_s;
  });
  on("snapshot", (snap) => {
    if (snap.full) { view.nodes.clear(); view.ages.clear(); $("log").replaceChildren(); }
    // After a reconnection the chart may have missed samples: fetch its history again.
    if (snap.full && view.selected && snap.nodes[view.selected]) selectNode(view.selected);
    for (const [device, row] of Object.entries(snap.nodes)) view.nodes.set(device, row);
    for (const [device, age] of Object.entries(snap.ages)) view.ages.set(device, age);
    for (const device of snap.gone) { view.nodes.delete(device); view.ages.delete(device); }
    renderStatus(snap.status);
    renderNodes();
    if (view.selected) drawChart();
  });
  on("frames", (frames) => frames.forEach(showFrame));
  on("frame", showFrame);
  on("signal", showSignal);
  on("result", showResult);
}

connect();
