// Building page elements from untrusted call text: every string becomes a text node
// (textContent), never markup, so a caller's words cannot inject HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A <dl> of label/value pairs; each value gets `data-field` so tests and styles find it.
export function fields(pairs, attrs = {}) {
  const dl = el("dl", { class: "fields", ...attrs });
  for (const [name, label, value] of pairs) {
    dl.append(el("div", { class: "field" }, el("dt", { text: label }),
      el("dd", { "data-field": name }, value)));
  }
  return dl;
}
