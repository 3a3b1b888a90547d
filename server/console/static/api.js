// The console's HTTP API: JSON in and out, the server's {"error": ...} shown to the
// supervisor, and a 401 (no session, or it expired) sending the page to the login form.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let unauthorized = () => {};

export function onUnauthorized(handler) {
  unauthorized = handler;
}

// `quiet`: the caller shows the error itself (a 404 becomes "not found" in the view).
export async function api(path, { method = "GET", body, quiet = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    const error = new ApiError(0, `The console server cannot be reached (${err.message}).`);
    if (!quiet) notify(error.message, "error");
    throw error;
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = (data && data.error) || `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, message);
    if (response.status === 401 && path !== "/api/login") {
      unauthorized();
    } else if (!quiet) {
      notify(message, "error");
    }
    throw error;
  }
  return data;
}

let hideTimer = 0;

// The banner at the top of the page: errors stay until closed, confirmations fade.
export function notify(message, kind = "info") {
  const box = document.getElementById("notice");
  const text = document.getElementById("notice-text");
  if (!box || !text) return;
  text.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(hideTimer);
  if (kind !== "error") hideTimer = setTimeout(() => { box.hidden = true; }, 4000);
}

export function dismissNotice() {
  const box = document.getElementById("notice");
  if (box) box.hidden = true;
}

export function sessionPath(sessionId, rest = "") {
  return `/api/calls/${encodeURIComponent(sessionId)}${rest}`;
}
