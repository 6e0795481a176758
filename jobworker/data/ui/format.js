// Small helpers for showing job data as text.

/** An element with a class and text (never HTML). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** The command line of a job, as one string (shown with textContent). */
export function commandLine(job) {
  return [job.command, ...(job.args || [])]
    .map((part) => (/^[\w@%+=:,./-]+$/.test(part) ? part : JSON.stringify(part)))
    .join(" ");
}

function seconds(value) {
  return value ? Date.parse(value) / 1000 : null;
}

/** "3 s", "4 min", "2 h", "5 d". */
export function span(total) {
  if (total === null || Number.isNaN(total)) return "";
  const s = Math.max(0, Math.round(total));
  if (s < 90) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

export function age(job, now = Date.now() / 1000) {
  return span(now - seconds(job.created_at));
}

export function duration(job, now = Date.now() / 1000) {
  const started = seconds(job.started_at);
  if (started === null) return "";
  return span((seconds(job.ended_at) ?? now) - started);
}

export function ended(job) {
  return !["RUNNING", "PENDING"].includes(job.status);
}

/** "key=value, ..." for a job's labels. */
export function labels(job) {
  return Object.entries(job.labels || {})
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}
