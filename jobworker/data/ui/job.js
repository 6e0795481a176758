// The job view: the record (kept current with ?wait= long polls), the live
// log (combined order over SSE, a tail first, "load earlier"), and a stop
// button for those the permission table lets stop this job.

import { may, request } from "./api.js";
import { commandLine, duration, el, ended, labels } from "./format.js";
import { LogView, payloadLength } from "./logview.js";
import { follow } from "./sse.js";

/** Lines of each stream shown first; "load earlier" shows more. */
export const TAIL_LINES = 1000;
const WAIT_SECONDS = 25;

const FIELDS = [
  ["Status", (job) => job.status],
  ["Id", (job) => job.id],
  ["Name", (job) => job.name],
  ["Owner", (job) => job.owner],
  ["Command", commandLine],
  ["Labels", labels],
  ["Created", (job) => job.created_at],
  ["Started", (job) => job.started_at],
  ["Ended", (job) => job.ended_at],
  ["Duration", duration],
  ["Exit code", (job) => job.exit_code],
  ["Signal", (job) => job.signal],
  ["Stopped by", (job) => job.stopped_by],
  ["Error", (job) => job.error],
];

/** Mount the view of job `id` in `root` for user `me`; returns an unmount. */
export function jobView(root, id, me) {
  const controller = new AbortController();
  let job = null;
  let stream = null;
  let tail = TAIL_LINES;
  let start = null; // [stdout, stderr] offsets where the shown log begins

  const back = el("a", "back", "← All jobs");
  back.href = "#/jobs";
  const heading = el("h1", null, `Job ${id}`);
  const message = el("p", "message");
  message.setAttribute("role", "status");
  const details = el("dl", "record");
  const actions = el("div", "actions");
  const stop = el("button", "danger", "Stop");
  stop.id = "stop";
  stop.hidden = true;
  actions.append(stop);
  root.append(back, heading, message, actions, details);

  const logSection = el("section", "log-section");
  logSection.setAttribute("aria-labelledby", "log-heading");
  const logHeading = el("h2", null, "Output");
  logHeading.id = "log-heading";
  const logState = el("span", "log-state");
  logState.setAttribute("role", "status");
  const earlier = el("button", null, "Load earlier");
  earlier.hidden = true;
  const legend = el("p", "legend");
  legend.append(el("span", "stdout", "stdout"), " ", el("span", "stderr", "stderr"));
  const pre = el("pre", "log");
  pre.tabIndex = 0;
  pre.setAttribute("role", "log");
  pre.setAttribute("aria-label", "Job output");
  const log = new LogView(pre);
  logSection.append(logHeading, logState, legend, earlier, pre);

  function show(record) {
    job = record;
    heading.textContent = `Job ${record.name || record.id}`;
    const rows = [];
    for (const [name, value] of FIELDS) {
      const text = value(record);
      if (text === null || text === undefined || text === "") continue;
      const dd = el("dd", name === "Status" ? `status status-${text}` : null, text);
      if (name === "Status") dd.id = "job-status";
      rows.push(el("dt", null, name), dd);
    }
    details.replaceChildren(...rows);
    // Only those allowed to stop this job see the button at all.
    stop.hidden = ended(record) || !may(me, "jobs.stop", record.owner);
  }

  async function watch() {
    // One long poll at a time, until the job has ended.
    while (!controller.signal.aborted && !(job && ended(job))) {
      try {
        const wait = job ? `?wait=${WAIT_SECONDS}` : "";
        show(await request("GET", `/jobs/${encodeURIComponent(id)}${wait}`, {
          signal: controller.signal,
        }));
      } catch (error) {
        if (error.name === "AbortError") return;
        message.textContent = error.message;
        if (error.status === 404 || error.status === 401) return;
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  }

  function followLog() {
    stream?.close();
    log.reset();
    start = null;
    const url =
      `/jobs/${encodeURIComponent(id)}/logs?stream=combined&follow=true` +
      (tail === null ? "" : `&tail=${tail}`);
    stream = follow(url, {
      event(event) {
        const data = JSON.parse(event.data || "null");
        if (event.type === "stdout" || event.type === "stderr") {
          if (start === null) firstEvent(event, data);
          log.add(event.type, data);
        } else if (event.type === "truncated") {
          log.marker(data.stream, `[${data.dropped} bytes of ${data.stream} were dropped]`);
        } else if (event.type === "end") {
          show(data);
        }
      },
      state(state) {
        logState.textContent = {
          connecting: "connecting…",
          live: "live",
          reconnecting: "connection lost, resuming…",
          ended: "complete",
          closed: "",
        }[state];
        logState.dataset.state = state;
      },
      error(error) {
        logState.textContent = error.message;
        logState.dataset.state = "error";
      },
    });
  }

  function firstEvent(event, data) {
    // The id holds both offsets after this event: what came before it?
    const [, out, err] = (event.id || "").split(":").map(Number);
    const length = payloadLength(data);
    start = [out - (event.type === "stdout" ? length : 0), err - (event.type === "stderr" ? length : 0)];
    earlier.hidden = !(start[0] > 0 || start[1] > 0);
  }

  earlier.addEventListener("click", () => {
    tail = tail !== null && tail < 100 * TAIL_LINES ? tail * 10 : null;
    followLog();
  });

  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      show(await request("POST", `/jobs/${encodeURIComponent(id)}/stop`, { body: {} }));
      message.textContent = "Stop requested.";
    } catch (error) {
      message.textContent = error.message;
    } finally {
      stop.disabled = false;
    }
  });

  (async () => {
    try {
      show(await request("GET", `/jobs/${encodeURIComponent(id)}`, { signal: controller.signal }));
    } catch (error) {
      if (error.name !== "AbortError") message.textContent = error.message;
      return;
    }
    if (may(me, "jobs.logs", job.owner)) {
      root.append(logSection);
      followLog();
    } else {
      root.append(el("p", "note", "Your role cannot read this job's output."));
    }
    watch();
  })();

  return () => {
    controller.abort();
    stream?.close();
  };
}
