// Small helpers for showing job data as text.

// Characters that reorder or hide the text around them (bidi controls such
// as U+202E, zero-width and other format characters) and control characters
// but tab and newline: a label or argument made of them read as something
// else ("owner=ops=maet ,alice").
// (Also the blank Hangul fillers, variation selectors and tag characters.)
const HIDING =
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;

/** C{text} with the characters of HIDING as \uXXXX (\u{XXXXX}) escapes. */
export function visible(text) {
  return String(text).replace(HIDING, (c) => {
    const code = c.codePointAt(0);
    return code > 0xffff
      ? `\\u{${code.toString(16)}}`
      : "\\u" + code.toString(16).padStart(4, "0");
  });
}

/** An element with a class and text (never HTML; hiding characters escaped). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = visible(text);
  return node;
}

/** The command line of a job, as one string (shown with textContent). */
export function commandLine(job) {
  return [job.command, ...(job.args || [])]
    .map((part) => (/^[\w@%+=:,./-]+$/.test(part) ? part : visible(JSON.stringify(part))))
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
