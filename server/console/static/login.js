// The sign-in form: an API key (a tenant's or an operator's) and the supervisor's name,
// which the call records keep beside each action taken.

import { api } from "./api.js";
import { el } from "./dom.js";

export function renderLogin(root, onSignedIn) {
  const key = el("input", { id: "login-key", name: "key", type: "password", required: true,
    autocomplete: "off", spellcheck: "false" });
  const name = el("input", { id: "login-name", name: "name", type: "text", autocomplete: "name",
    maxlength: 80, placeholder: "e.g. Dana Smith" });
  const error = el("p", { id: "login-error", class: "form-error", role: "alert" });
  const submit = el("button", { id: "login-submit", type: "submit", class: "primary",
    text: "Sign in" });
  const form = el("form", { id: "login-form", class: "card login" },
    el("h2", { text: "Sign in to the supervisor console" }),
    el("label", { for: "login-key", text: "API key" }), key,
    el("label", { for: "login-name", text: "Your name (shown on whispers and transfers)" }), name,
    error, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    try {
      const me = await api("/api/login", { method: "POST", quiet: true,
        body: { key: key.value.trim(), name: name.value.trim() } });
      onSignedIn(me);
    } catch (err) {
      error.textContent = err.status === 401 ? "That key is not valid. Check it and try again."
        : err.message;
      key.select();
    } finally {
      submit.disabled = false;
    }
  });
  root.replaceChildren(form);
  key.focus();
}
