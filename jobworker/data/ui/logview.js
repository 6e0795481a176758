// A job's output on the page: stdout and stderr told apart, terminal escapes
// stripped, other control characters shown as symbols, bytes that are not
// UTF-8 shown as a marker. Everything goes in as text, never as HTML.

// A whole escape sequence: CSI (colours, cursor), OSC (titles, links), or a
// two-character escape.
const ESCAPE = /\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])/g;
// The start of a sequence that a later chunk may finish.
const UNFINISHED = /\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?)?$/;
// C0 controls other than tab and newline, and DEL.
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

/** Terminal escapes removed; CR LF as LF; other controls as visible symbols. */
export function clean(text) {
  return text
    .replace(ESCAPE, "")
    .replace(/\r\n/g, "\n")
    .replace(/\r/g, "\n")
    .replace(CONTROL, (c) => String.fromCodePoint(c === "\x7f" ? 0x2421 : 0x2400 + c.charCodeAt(0)));
}

function bytesOf(payload) {
  if (typeof payload.text === "string") return new TextEncoder().encode(payload.text);
  const raw = atob(payload.base64 || "");
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/** How many bytes of output an event carries (to find where a tail starts). */
export function payloadLength(payload) {
  return bytesOf(payload).length;
}

/** One stream's decoder: UTF-8 across chunk boundaries, escapes held back. */
class StreamText {
  constructor() {
    this.decoder = new TextDecoder("utf-8", { fatal: true });
    this.carry = "";
  }

  /** The text of `bytes` to show now; null if they are not UTF-8. */
  decode(bytes) {
    let text;
    try {
      text = this.decoder.decode(bytes, { stream: true });
    } catch {
      this.decoder = new TextDecoder("utf-8", { fatal: true });
      this.carry = "";
      return null;
    }
    text = this.carry + text;
    const unfinished = text.match(UNFINISHED);
    this.carry = "";
    if (unfinished && unfinished[0].length < 256) {
      this.carry = unfinished[0];
      text = text.slice(0, unfinished.index);
    }
    return clean(text);
  }
}

/**
 * The log element's content, appended chunk by chunk: at most `maxParts`
 * parts of at most `partChars` characters each (the oldest go), and one
 * layout a frame to follow the end, however fast the chunks come (a job
 * writing one stream grew one part without bound, and each chunk forced a
 * layout of the whole log: attacker round 28b).
 */
export class LogView {
  constructor(element, { maxParts = 4000, partChars = 4096 } = {}) {
    this.element = element;
    this.maxParts = maxParts;
    this.partChars = partChars;
    this.scrolling = false;
    this.reset();
  }

  reset() {
    this.element.replaceChildren();
    this.streams = { stdout: new StreamText(), stderr: new StreamText() };
    this.last = null;
    this.lastStream = null;
    this.lastChars = 0;
  }

  /** A chunk of `stream` ("stdout" or "stderr") output, as the server sent it. */
  add(stream, payload) {
    const bytes = bytesOf(payload);
    const text = this.streams[stream].decode(bytes);
    if (text === null) {
      this.marker(stream, `[${bytes.length} bytes of binary output]`);
      return;
    }
    if (!text) return;
    // (A scroll to the end already due: still at the end, no layout asked.)
    const follow = this.scrolling || this.atBottom();
    if (
      this.last &&
      this.lastStream === stream &&
      this.lastChars + text.length <= this.partChars
    ) {
      this.last.append(text);
      this.lastChars += text.length;
    } else {
      const part = document.createElement("span");
      part.className = stream;
      part.dataset.stream = stream;
      part.textContent = text;
      this.append(part, stream);
      this.lastChars = text.length;
    }
    if (follow) this.scrollToEnd();
  }

  /** Follow the end, once a frame. */
  scrollToEnd() {
    if (this.scrolling) return;
    this.scrolling = true;
    const scroll = () => {
      this.scrolling = false;
      this.element.scrollTop = this.element.scrollHeight;
    };
    if (typeof requestAnimationFrame === "function") requestAnimationFrame(scroll);
    else scroll();
  }

  /** A note inside the log (binary output, truncation), told apart from output. */
  marker(stream, text) {
    const part = document.createElement("span");
    part.className = `marker ${stream}`;
    part.textContent = text + "\n";
    this.append(part, null);
  }

  append(part, stream) {
    this.element.append(part);
    this.last = stream ? part : null;
    this.lastStream = stream;
    while (this.element.childNodes.length > this.maxParts) {
      this.element.firstChild.remove();
    }
  }

  atBottom() {
    const e = this.element;
    return e.scrollHeight - e.scrollTop - e.clientHeight < 24;
  }
}
