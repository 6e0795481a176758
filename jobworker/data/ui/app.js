// The dashboard's entry point: login and logout, and the two views by URL
// fragment (#/jobs?filters, #/jobs/<id>).

import { forget, login, loginWithCertificate, onExpired, session, whoami } from "./api.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";
import { metricsPanel } from "./metrics.js";

const $ = (id) => document.getElementById(id);

let me = null;
let unmount = [];

function clearView() {
  for (const stop of unmount) stop();
  unmount = [];
  $("view").replaceChildren();
}

function showLogin(message = "") {
  me = null;
  clearView();
  $("who").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message;
  $("login-password").value = "";
  $("login-name").focus();
}

function filtersOf(hash) {
  const [, search = ""] = hash.split("?");
  return Object.fromEntries(new URLSearchParams(search));
}

function route() {
  if (!me) return;
  clearView();
  const view = $("view");
  const hash = location.hash || "#/jobs";
  const match = hash.match(/^#\/jobs\/([^/?]+)$/);
  if (match) {
    unmount.push(jobView(view, decodeURIComponent(match[1]), me));
  } else {
    const filters = filtersOf(hash);
    unmount.push(
      jobsView(view, {
        filters,
        onFilters(values) {
          const search = new URLSearchParams(
            Object.entries(values).filter(([, value]) => value),
          ).toString();
          history.replaceState(null, "", "#/jobs" + (search ? "?" + search : ""));
        },
      }),
    );
    if (me.permissions["metrics.read"]) unmount.push(metricsPanel(view));
  }
  $("main").focus({ preventScroll: true });
}

async function start() {
  try {
    me = await whoami();
  } catch (error) {
    forget();
    showLogin(error.status === 401 ? "Your session has ended: log in again." : error.message);
    return;
  }
  $("login").hidden = true;
  $("who").textContent = `${me.user} (${me.role})`;
  $("who").hidden = false;
  $("logout").hidden = false;
  route();
}

/**
 * Obtain a token with `obtain` (either way of logging in), then show the
 * jobs; a 401 shows `refused`, any other error the server's message.
 */
async function logIn(obtain, refused) {
  const buttons = [$("login-submit"), $("login-certificate")];
  for (const button of buttons) button.disabled = true;
  $("login-message").textContent = "";
  try {
    await obtain();
    $("login-password").value = "";
    await start();
  } catch (error) {
    $("login-message").textContent = error.status === 401 ? refused : error.message;
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    logIn(() => login($("login-name").value, $("login-password").value), "Wrong name or password.");
  });
  $("login-certificate").addEventListener("click", () => {
    logIn(
      loginWithCertificate,
      "No client certificate was accepted: your browser sent none the server " +
        "trusts, or its name is not a user here. Log in with your name and password.",
    );
  });
  $("logout").addEventListener("click", () => {
    forget();
    showLogin("Logged out.");
  });
  onExpired(() => showLogin("Your session has expired: log in again."));
  window.addEventListener("hashchange", route);
  if (session()) start();
  else showLogin();
});
