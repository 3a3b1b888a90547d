// How numbers and times read on the page.

export function duration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

export function clock(unixSeconds) {
  if (!unixSeconds) return "";
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

export function dateTime(unixSeconds) {
  if (!unixSeconds) return "";
  const d = new Date(unixSeconds * 1000);
  return `${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour12: false })}`;
}

export function ms(value) {
  const n = Number(value) || 0;
  return n >= 10000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`;
}

export function offset(atSeconds) {
  return `${(Number(atSeconds) || 0).toFixed(1)} s`;
}

// "OUTCOME_INVALID_ARGUMENTS" -> "invalid arguments"; "TRANSFERRED" -> "transferred".
export function enumName(value, prefix = "") {
  return String(value || "").replace(prefix, "").toLowerCase().replaceAll("_", " ");
}

// A tool's JSON arguments on one line with a space after each separator (so a narrow
// column wraps between values), re-serialised when they parse (as sent otherwise).
// JSON.stringify escapes newlines inside strings: every newline it writes is layout.
export function compactJson(text) {
  let value = text ?? {};
  if (typeof text === "string") {
    try {
      value = JSON.parse(text);
    } catch {
      return text;
    }
  }
  return JSON.stringify(value, null, 1).replace(/\n */g, " ").replace(/^([[{]) /, "$1")
    .replace(/ ([\]}])$/, "$1");
}
