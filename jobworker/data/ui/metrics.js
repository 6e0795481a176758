// The Admin panel: a few numbers from GET /metrics (Prometheus text),
// sampled every few seconds and drawn as small inline SVG charts.

import { request } from "./api.js";
import { el } from "./format.js";

const SAMPLE_SECONDS = 5;
const KEEP = 60;
const SVG = "http://www.w3.org/2000/svg";

/** Prometheus text format -> Map of "name{labels}" -> value (and name -> sum). */
export function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    const [, name, labels = "", raw] = match;
    const value = Number(raw);
    values.set(name + labels, value);
    values.set(name, (values.get(name) || 0) + value);
  }
  return values;
}

const CHARTS = [
  ["running", "Running", (m) => m.get('jobworker_jobs{status="RUNNING"}') || 0, false],
  ["pending", "Pending", (m) => m.get('jobworker_jobs{status="PENDING"}') || 0, false],
  ["starts", "Started / min", (m) => m.get("jobworker_job_starts_total") || 0, true],
  ["output", "Output bytes / s", (m) => m.get("jobworker_output_bytes_total") || 0, true],
];

function chart(title) {
  const figure = el("figure", "chart");
  const caption = el("figcaption", null, title);
  const value = el("span", "chart-value", "…");
  caption.append(" ", value);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 120 40");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", title);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("fill", "none");
  svg.append(line);
  figure.append(caption, svg);
  return { figure, value, line };
}

function draw(parts, series) {
  // The newest sample on the right; a lone sample as a flat line.
  const shown = series.length === 1 ? [series[0], series[0]] : series;
  const top = Math.max(1, ...shown);
  const step = 120 / (KEEP - 1);
  const points = shown.map(
    (v, i) => `${120 - (shown.length - 1 - i) * step},${38 - (v / top) * 36}`,
  );
  parts.line.setAttribute("points", points.join(" "));
  const last = series.at(-1) ?? 0;
  parts.value.textContent = Number.isInteger(last) ? String(last) : last.toFixed(1);
}

/** Mount the panel in `root`; returns an unmount. */
export function metricsPanel(root) {
  const section = el("section", "metrics");
  section.setAttribute("aria-label", "Server metrics");
  section.append(el("h2", null, "Server"));
  const grid = el("div", "charts");
  const charts = CHARTS.map(([key, title]) => ({ key, ...chart(title) }));
  for (const parts of charts) grid.append(parts.figure);
  const message = el("p", "message");
  section.append(grid, message);
  root.append(section);
  const history = Object.fromEntries(CHARTS.map(([key]) => [key, []]));
  let previous = null;
  let timer = null;
  let gone = false;

  async function sample() {
    try {
      const metrics = parseMetrics(await request("GET", "/metrics", { text: true }));
      const now = Date.now() / 1000;
      CHARTS.forEach(([key, , read, rate], index) => {
        let value = read(metrics);
        if (rate) {
          const before = previous?.values[index];
          const seconds = previous ? now - previous.at : 0;
          const perSecond = seconds > 0 ? Math.max(0, value - before) / seconds : 0;
          value = key === "starts" ? perSecond * 60 : perSecond;
        }
        history[key].push(value);
        if (history[key].length > KEEP) history[key].shift();
        draw(charts[index], history[key]);
      });
      previous = { at: now, values: CHARTS.map(([, , read]) => read(metrics)) };
      message.textContent = "";
    } catch (error) {
      message.textContent = error.message;
    }
    if (!gone) timer = setTimeout(sample, SAMPLE_SECONDS * 1000);
  }

  sample();
  return () => {
    gone = true;
    clearTimeout(timer);
  };
}
