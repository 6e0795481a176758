// The page's side of the REST API: the bearer token (sessionStorage only),
// JSON requests, and what an expired or refused token means.

const TOKEN_KEY = "jobworker.token";

/** Thrown for an answer that is not 2xx; `status` and the server's `message`. */
export class APIError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Listeners told when the token stops working (401): back to the login form. */
const expiredListeners = [];
export function onExpired(listener) {
  expiredListeners.push(listener);
}

export function session() {
  const raw = sessionStorage.getItem(TOKEN_KEY);
  if (!raw) return null;
  try {
    const value = JSON.parse(raw);
    if (Date.parse(value.expires_at) <= Date.now()) {
      expired();
      return null;
    }
    return value;
  } catch {
    forget();
    return null;
  }
}

export function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The headers of an authenticated request (plus `extra`). */
export function authorized(extra = {}) {
  const current = session();
  const headers = { ...extra };
  if (current) headers.Authorization = "Bearer " + current.token;
  return headers;
}

async function errorOf(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: keep the status text
  }
  return new APIError(response.status, message);
}

function expired() {
  forget();
  for (const listener of expiredListeners) listener();
}

/** Note a 401 for a request that carried a token: the token no longer works. */
export function checkExpired(response, headers) {
  if (response.status === 401 && headers.Authorization) expired();
}

/**
 * A JSON request with the token. `body` (an object) is sent as JSON; every
 * state change carries Content-Type: application/json, as the server asks.
 */
export async function request(method, path, { body, signal, text } = {}) {
  const headers = authorized({ Accept: text ? "text/plain" : "application/json" });
  const init = { method, headers, signal, cache: "no-store", credentials: "omit" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  const response = await fetch(path, init);
  checkExpired(response, headers);
  if (!response.ok) throw await errorOf(response);
  return text ? response.text() : response.json();
}

/**
 * POST /tokens with `headers` (besides the JSON ones) and keep the token for
 * this tab only. `credentials` is the fetch credentials mode: "omit" unless
 * the TLS client certificate must go with the request.
 */
async function obtainToken(headers, credentials) {
  const response = await fetch("/tokens", {
    method: "POST",
    headers: { ...headers, "Content-Type": "application/json", Accept: "application/json" },
    body: "{}",
    cache: "no-store",
    credentials,
  });
  if (!response.ok) throw await errorOf(response);
  const token = await response.json();
  sessionStorage.setItem(TOKEN_KEY, JSON.stringify(token));
  return token;
}

/** Log in with a name and password: a token for this tab only. */
export function login(name, password) {
  const basic = btoa(String.fromCodePoint(...new TextEncoder().encode(`${name}:${password}`)));
  return obtainToken({ Authorization: "Basic " + basic }, "omit");
}

/**
 * Log in with the client certificate the browser presents in the TLS
 * handshake (the server asks for one when it runs with --client-ca): no
 * Authorization header, so the server takes the user from the certificate.
 * The Fetch standard counts a client certificate among a request's
 * credentials, hence "same-origin" (the page sets no cookies: there are none
 * to send); chromium happens to present one to uncredentialed requests too,
 * other browsers need not. Every later request carries the token,
 * uncredentialed, as before.
 */
export function loginWithCertificate() {
  return obtainToken({}, "same-origin");
}

/** Who the token is of, with the role's permissions (GET /whoami). */
export function whoami() {
  return request("GET", "/whoami");
}

/** Whether `me` may do `permission` (e.g. "jobs.stop") on a job of `owner`. */
export function may(me, permission, owner) {
  const scope = me.permissions[permission];
  return scope === "all" || (scope === "own" && owner === me.user);
}

/** A query string from an object, leaving out empty values; arrays repeat. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") search.append(key, item);
    }
  }
  const text = search.toString();
  return text ? "?" + text : "";
}
