// Server-Sent Events over fetch (EventSource cannot send Authorization):
// a parser, and a follower that resumes from the last whole event after a
// dropped connection, as EventSource would with Last-Event-ID.

import { APIError, authorized, checkExpired } from "./api.js";

/**
 * Split `buffer` into whole events and the unfinished rest. An event is a
 * block of `field: value` lines ended by a blank line; `:` lines are
 * comments (the server's heartbeats).
 */
export function parseEvents(buffer) {
  const events = [];
  const text = buffer.replace(/\r\n?/g, "\n");
  let start = 0;
  for (;;) {
    const end = text.indexOf("\n\n", start);
    if (end < 0) break;
    const block = text.slice(start, end);
    start = end + 2;
    let id = null;
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") id = value;
      else if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (data.length || id !== null) events.push({ id, type, data: data.join("\n") });
  }
  return { events, rest: text.slice(start) };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow `url` as SSE until its `end` event or `close()`. `handlers.event`
 * gets each whole event; `handlers.state` gets "connecting", "live",
 * "reconnecting", "ended" or "closed"; `handlers.error` a final APIError
 * (401, 403, 404: retrying cannot help). After a drop the request is sent
 * again with Last-Event-ID: the id of the last whole event shown, so
 * nothing is repeated and nothing is missed.
 */
export function follow(url, handlers) {
  const controller = new AbortController();
  let closed = false;
  let lastId = null;

  async function once() {
    const headers = authorized({ Accept: "text/event-stream" });
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const response = await fetch(url, {
      headers,
      signal: controller.signal,
      cache: "no-store",
      credentials: "omit",
    });
    checkExpired(response, headers);
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error || message;
      } catch {
        // keep the status text
      }
      throw new APIError(response.status, message);
    }
    handlers.state?.("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      const parsed = parseEvents(buffer + value);
      buffer = parsed.rest;
      for (const event of parsed.events) {
        if (closed) return true;
        handlers.event(event);
        if (event.id !== null) lastId = event.id;
        if (event.type === "end") return true;
      }
    }
  }

  (async () => {
    let delay = 250;
    handlers.state?.("connecting");
    while (!closed) {
      try {
        if (await once()) {
          handlers.state?.(closed ? "closed" : "ended");
          return;
        }
        delay = 250;
      } catch (error) {
        if (closed) break;
        if (error instanceof APIError && ![429, 503].includes(error.status)) {
          handlers.error?.(error);
          return;
        }
      }
      if (closed) break;
      handlers.state?.("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
    handlers.state?.("closed");
  })();

  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}
