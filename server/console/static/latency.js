// A turn's latency as one bar split into its stages, each labelled in ms: how long the
// end of turn took to decide, the final transcript, the first LLM token, the first TTS
// audio. Bars of one call share a scale so turns compare at a glance.

import { el } from "./dom.js";
import { ms } from "./format.js";

export const STAGES = [
  ["endpoint", "endpoint_ms", "end of turn"],
  ["stt", "stt_ms", "STT"],
  ["llm", "llm_first_token_ms", "first LLM token"],
  ["tts", "tts_first_chunk_ms", "first TTS chunk"],
];

export function stageTotal(metrics) {
  return STAGES.reduce((sum, [, field]) => sum + (Number(metrics[field]) || 0), 0);
}

// `scaleMs`: the length the full width stands for (the call's slowest turn, at least 1 s).
export function latencyBar(metrics, scaleMs) {
  const scale = Math.max(1000, scaleMs || 0, stageTotal(metrics));
  const bar = el("div", { class: "latency-bar", role: "img",
    "aria-label": STAGES.map(([, f, label]) => `${label} ${ms(metrics[f])}`).join(", ") });
  const legend = el("ul", { class: "latency-legend" });
  for (const [stage, field, label] of STAGES) {
    const value = Number(metrics[field]) || 0;
    const segment = el("span", { class: `stage stage-${stage}`, "data-stage": stage,
      "data-ms": value, title: `${label}: ${ms(value)}` });
    segment.style.width = `${(100 * value / scale).toFixed(2)}%`;  // CSSOM: no inline CSS
    bar.append(segment);
    legend.append(el("li", { "data-stage": stage },
      el("span", { class: `swatch stage-${stage}` }), `${label} `,
      el("strong", { text: ms(value) })));
  }
  const total = Number(metrics.voice_to_voice_ms) || 0;
  return el("div", { class: "latency", "data-turn-id": metrics.turn_id ?? 0 }, bar, legend,
    el("p", { class: "muted v2v" }, "voice to voice ",
      el("strong", { "data-field": "voice_to_voice_ms", text: total ? ms(total) : "–" })));
}
