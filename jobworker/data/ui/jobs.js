// The jobs view: filters, one page of jobs (by cursor), kept current by
// fetching the page shown again every few seconds while the tab is visible.

import { query, request } from "./api.js";
import { age, commandLine, duration, el, labels } from "./format.js";

/** Seconds between refreshes of the page shown (only while visible). */
export const REFRESH_SECONDS = 3;
const PAGE_SIZE = 25;

const COLUMNS = ["Status", "Job", "Owner", "Command", "Age", "Duration"];

function filterForm(values, onChange) {
  const form = el("form", "filters");
  form.setAttribute("role", "search");
  form.setAttribute("aria-label", "Filter jobs");
  const field = (name, label, input) => {
    const wrap = el("label", "field", label);
    input.name = name;
    input.value = values[name] || "";
    wrap.append(input);
    form.append(wrap);
  };
  const status = el("select");
  for (const value of ["", "PENDING", "RUNNING", "COMPLETED", "FAILED", "STOPPED"]) {
    status.append(new Option(value || "any", value));
  }
  field("status", "Status", status);
  for (const [name, label, hint] of [
    ["owner", "Owner", "name"],
    ["name", "Name", "job name"],
    ["label", "Label", "key=value"],
  ]) {
    const input = el("input");
    input.type = "text";
    input.placeholder = hint;
    input.autocomplete = "off";
    field(name, label, input);
  }
  const apply = el("button", null, "Apply");
  apply.type = "submit";
  form.append(apply);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onChange(Object.fromEntries(new FormData(form)));
  });
  status.addEventListener("change", () => form.requestSubmit());
  return form;
}

function row(job) {
  const tr = el("tr");
  tr.dataset.id = job.id;
  const link = el("a", null, job.name || job.id);
  link.href = `#/jobs/${encodeURIComponent(job.id)}`;
  const cells = {
    status: el("span", `status status-${job.status}`, job.status),
    job: link,
    owner: el("span", null, job.owner),
    command: el("code", null, commandLine(job)),
    age: el("span", null, age(job)),
    duration: el("span", null, duration(job)),
  };
  for (const [name, content] of Object.entries(cells)) {
    const td = el("td", `col-${name}`);
    td.append(content);
    if (name === "job" && labels(job)) td.append(el("div", "labels", labels(job)));
    tr.append(td);
  }
  return tr;
}

/** Mount the jobs view in `root`; returns a function that unmounts it. */
export function jobsView(root, { filters = {}, onFilters }) {
  let cursors = [null]; // the cursor of each page so far; the last is shown
  let next = null;
  let timer = null;
  let gone = false;
  let controller = null;

  const heading = el("h1", null, "Jobs");
  const form = filterForm(filters, (values) => {
    cursors = [null];
    onFilters(values);
    filters = values;
    refresh();
  });
  const message = el("p", "message");
  message.setAttribute("role", "status");
  const table = el("table", "jobs");
  const caption = el("caption", "visually-hidden", "Jobs, newest first");
  const head = el("thead");
  const headRow = el("tr");
  for (const name of COLUMNS) {
    const th = el("th", `col-${name.toLowerCase()}`, name);
    th.scope = "col";
    headRow.append(th);
  }
  head.append(headRow);
  const body = el("tbody");
  table.append(caption, head, body);
  const scroller = el("div", "table-scroll");
  scroller.append(table);
  const newer = el("button", null, "Newer");
  const older = el("button", null, "Older");
  const pager = el("nav", "pager");
  pager.setAttribute("aria-label", "Pages");
  pager.append(newer, older);
  newer.addEventListener("click", () => {
    cursors.pop();
    refresh();
  });
  older.addEventListener("click", () => {
    cursors.push(next);
    refresh();
  });
  root.append(heading, form, message, scroller, pager);

  function show(jobs) {
    // Rows are replaced in place, so focus and scroll stay where they were.
    const focused = document.activeElement?.closest?.("tr")?.dataset.id;
    body.replaceChildren(...jobs.map(row));
    if (focused) body.querySelector(`tr[data-id="${CSS.escape(focused)}"] a`)?.focus();
    // A page of two filters or more searches so many jobs at most: it may
    // come back empty with older jobs still to search.
    message.textContent = jobs.length
      ? ""
      : next === null
        ? "No jobs match."
        : "None among the jobs searched so far: Older searches further back.";
    newer.disabled = cursors.length <= 1;
    older.disabled = next === null;
  }

  async function refresh() {
    clearTimeout(timer);
    controller?.abort();
    controller = new AbortController();
    const { label, ...rest } = filters;
    const path =
      "/jobs" +
      query({ ...rest, label: label || undefined, limit: PAGE_SIZE, cursor: cursors.at(-1) });
    try {
      const page = await request("GET", path, { signal: controller.signal });
      next = page.next_cursor;
      show(page.jobs);
      table.setAttribute("aria-busy", "false");
    } catch (error) {
      if (error.name === "AbortError") return;
      message.textContent = error.message;
    }
    if (!gone) timer = setTimeout(whenVisible, REFRESH_SECONDS * 1000);
  }

  function whenVisible() {
    if (document.visibilityState === "visible") refresh();
    else document.addEventListener("visibilitychange", refresh, { once: true });
  }

  table.setAttribute("aria-busy", "true");
  refresh();
  return () => {
    gone = true;
    clearTimeout(timer);
    controller?.abort();
    document.removeEventListener("visibilitychange", refresh);
  };
}
