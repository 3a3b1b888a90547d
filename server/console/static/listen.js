// Listen-in: the call's two sides over /api/calls/{id}/listen, played with Web Audio,
// caller on the left and agent on the right. Each side's PCM is scheduled back to back
// on its own clock (the agent's arrives in bursts ahead of real time, the caller's
// frame by frame); "clear" (barge-in) drops the agent audio not yet played, as the
// phone did. Frames received per side are counted on window.voxlineListen and on the
// counter element's data attributes.

const CALLER = 0;
const AGENT = 1;
const LEAD_S = 0.12;  // jitter buffer: how far ahead of now a side's audio starts

export class ListenIn {
  constructor(sessionId, counter, onState) {
    this.sessionId = sessionId;
    this.counter = counter;
    this.onState = onState;
    this.counts = { caller: 0, agent: 0, clears: 0, sample_rate: 0, state: "idle" };
    this.socket = null;
    this.context = null;
    this.merger = null;
    this.next = [0, 0];
    this.agentSources = new Set();
    this.publish();
  }

  start() {
    this.counts.state = "connecting";
    this.publish();
    try {
      // Made on the Listen click (a user gesture), so the browser lets it play.
      this.context = new AudioContext();
      this.merger = this.context.createChannelMerger(2);
      this.merger.connect(this.context.destination);
      if (this.context.state === "suspended") this.context.resume().catch(() => {});
    } catch (err) {
      this.context = null;  // no audio output: still count what arrives
      console.warn("listen-in without audio:", err);
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/api/calls/${encodeURIComponent(this.sessionId)}/listen`;
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.counts.state = "closed";
      this.publish();
    });
    socket.addEventListener("error", () => {
      this.counts.state = "error";
      this.publish();
    });
    this.socket = socket;
  }

  stop() {
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
    if (this.context) this.context.close().catch(() => {});
    this.context = null;
    this.agentSources.clear();
    this.counts.state = "stopped";
    this.publish();
  }

  receive(data) {
    if (typeof data === "string") {
      if (data === "clear") {
        this.counts.clears += 1;
        this.clearAgent();
      } else {
        const header = JSON.parse(data);
        this.counts.sample_rate = header.sample_rate;
        this.counts.state = "listening";
      }
      this.publish();
      return;
    }
    const view = new DataView(data);
    if (view.byteLength < 1) return;
    const side = view.getUint8(0);
    if (side === CALLER) this.counts.caller += 1;
    else if (side === AGENT) this.counts.agent += 1;
    else return;
    this.publish();
    this.play(side, view);
  }

  play(side, view) {
    const ctx = this.context;
    const rate = this.counts.sample_rate;
    const samples = (view.byteLength - 1) >> 1;
    if (!ctx || !rate || !samples) return;
    const buffer = ctx.createBuffer(1, samples, rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples; i += 1) channel[i] = view.getInt16(1 + 2 * i, true) / 32768;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.merger, 0, side);  // merger input 0 = left, 1 = right
    const start = Math.max(this.next[side], ctx.currentTime + LEAD_S);
    source.start(start);
    this.next[side] = start + buffer.duration;
    if (side === AGENT) {
      this.agentSources.add(source);
      source.addEventListener("ended", () => this.agentSources.delete(source));
    }
  }

  clearAgent() {
    for (const source of this.agentSources) {
      try {
        source.stop();
      } catch {
        // already finished
      }
    }
    this.agentSources.clear();
    this.next[AGENT] = 0;
  }

  publish() {
    window.voxlineListen = { ...this.counts };
    if (this.counter) {
      this.counter.dataset.caller = String(this.counts.caller);
      this.counter.dataset.agent = String(this.counts.agent);
      this.counter.dataset.state = this.counts.state;
      this.counter.textContent = this.counts.state === "idle" ? ""
        : `${this.counts.state} · caller ${this.counts.caller} · agent ${this.counts.agent} frames`;
    }
    this.onState?.(this.counts.state);
  }
}
