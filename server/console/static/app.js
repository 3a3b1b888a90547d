// The console page: who is signed in, and which view the address shows —
// #/live (default), #/call/<session id>, #/history[?search], #/record/<session id>.

import { api, dismissNotice, onUnauthorized } from "./api.js";
import { renderCall } from "./call.js";
import { renderHistory, renderRecord } from "./history.js";
import { renderLive } from "./live.js";
import { renderLogin } from "./login.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let me = null;
let leave = null;  // closes the current view's streams

function stopView() {
  if (typeof leave === "function") leave();
  leave = null;
}

function showLogin() {
  stopView();
  me = null;
  nav.hidden = true;
  who.hidden = true;
  document.body.dataset.signedIn = "false";
  renderLogin(view, (signedIn) => {
    me = signedIn;
    showUser();
    route();
  });
}

function showUser() {
  nav.hidden = false;
  who.hidden = false;
  document.body.dataset.signedIn = "true";
  document.getElementById("who-name").textContent = me.who || "supervisor";
  document.getElementById("who-scope").textContent = me.operator ? "operator: all tenants"
    : `tenant ${me.tenant}`;
}

function route() {
  if (!me) return;
  stopView();
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const [page, ...rest] = path.split("/");
  const id = decodeURIComponent(rest.join("/"));
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("active", link.dataset.page === (page === "call" ? "live"
      : page === "record" ? "history" : page || "live"));
  }
  if (page === "call" && id) leave = renderCall(view, me, id);
  else if (page === "history") leave = renderHistory(view, me, new URLSearchParams(search));
  else if (page === "record" && id) leave = renderRecord(view, me, id);
  else leave = renderLive(view, me);
  document.title = `Voxline console · ${page === "call" ? "call" : page || "live"}`;
}

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("/api/logout", { method: "POST" });
  } finally {
    showLogin();
  }
});
document.getElementById("notice-close").addEventListener("click", dismissNotice);
window.addEventListener("hashchange", route);
onUnauthorized(showLogin);

api("/api/me", { quiet: true }).then((signedIn) => {
  me = signedIn;
  showUser();
  route();
}, (err) => {
  if (err.status === 401) showLogin();
  else view.textContent = `The console cannot start: ${err.message}`;
});
