"""The Riva-compatible API measured with the unmodified riva.client against a real
`voxline serve` (default models) on loopback: WER on Riva's three example files through
Recognize and StreamingRecognize, per file and over the set, with and without the word
boosting Riva's own test uses; Recognize time against the audio's length; and
SynthesizeOnline's first audio against the whole synthesis in the same request.

    .venv/bin/python scripts/bench_riva.py [--rounds 5] [--json bench/riva.json]

Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jiwer
import riva.client

from voxline.bench import RIVA_BOOSTED, manifest_rows, percentiles, riva_references
from voxline.client.local_server import server_process
from voxline.wer import normalize

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT.parent / "shared" / "data" / "speech" / "riva_examples"
SENTENCES = ["Your order has shipped", " and will arrive on Monday.",
             " Thank you for calling Acme."]


def recognition_config(boost: list[str] | None) -> riva.client.RecognitionConfig:
    # As riva's transcribe_file_offline.py sends it: no encoding, no rate (WAV header).
    config = riva.client.RecognitionConfig(max_alternatives=1, verbatim_transcripts=True)
    riva.client.add_word_boosting_to_config(config, boost, 4.0)
    return config


def recognize(asr: riva.client.ASRService, path: Path, boost: list[str] | None
              ) -> tuple[str, float]:
    start = time.perf_counter()
    response = asr.offline_recognize(path.read_bytes(), recognition_config(boost))
    took = time.perf_counter() - start
    return "".join(r.alternatives[0].transcript for r in response.results), took


def stream(asr: riva.client.ASRService, path: Path, boost: list[str] | None) -> str:
    # As transcribe_file.py without --simulate-realtime: chunks as fast as they go.
    config = riva.client.StreamingRecognitionConfig(config=recognition_config(boost),
                                                    interim_results=True)
    riva.client.add_audio_file_specs_to_config(config, path)
    with riva.client.AudioChunkFileIterator(path, 1600) as chunks:
        return "".join(r.alternatives[0].transcript
                       for response in asr.streaming_response_generator(chunks, config)
                       for r in response.results if r.is_final)


def wer_table(refs: dict[str, str], hyps: dict[str, str]) -> dict[str, float]:
    names = sorted(refs)
    r, h = [normalize(refs[n]) for n in names], [normalize(hyps[n]) for n in names]
    table = {n: round(jiwer.wer(a, b), 3) for n, a, b in zip(names, r, h, strict=True)}
    return {**table, "set": round(jiwer.wer(r, h), 3)}


def synthesize_online(tts: riva.client.SpeechSynthesisService) -> tuple[float, float]:
    """Seconds to the first audio chunk and to the last."""
    start = time.perf_counter()
    first = last = 0.0
    for _ in tts.synthesize_online(SENTENCES, sample_rate_hz=22050):
        last = time.perf_counter() - start
        first = first or last
    return first, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "riva.json")
    args = ap.parse_args()
    rows = {row["file"]: row for row in manifest_rows(EXAMPLES)}
    refs = riva_references(EXAMPLES)

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text("limits: {max_message_bytes: 4194304}\nrecords: {enabled: false}\n")
        with server_process(config, Path(tmp) / "server.log") as server:
            auth = riva.client.Auth(uri=server.address)
            asr, tts = riva.client.ASRService(auth), riva.client.SpeechSynthesisService(auth)
            stream(asr, EXAMPLES / "en-US_sample.wav", None)  # warm up
            heard: dict[str, dict[str, str]] = {"recognize": {}, "recognize_unboosted": {},
                                                "streaming": {}}
            rtf = []
            for name in sorted(rows):
                path, boost = EXAMPLES / name, RIVA_BOOSTED.get(name)
                heard["recognize"][name], took = recognize(asr, path, boost)
                heard["recognize_unboosted"][name] = recognize(asr, path, None)[0]
                heard["streaming"][name] = stream(asr, path, boost)
                rtf.append(took / float(rows[name]["duration_s"]))
            synthesis = [synthesize_online(tts) for _ in range(args.rounds + 1)][1:]

    result = {
        "wer": {way: wer_table(refs, texts) for way, texts in heard.items()},
        "transcripts": heard,
        "recognize_time_over_audio": {n: round(x, 3) for n, x in zip(sorted(rows), rtf,
                                                                        strict=True)},
        "synthesize_online_first_audio_ms": percentiles([f * 1000 for f, _ in synthesis]),
        "synthesize_online_all_audio_ms": percentiles([a * 1000 for _, a in synthesis]),
        "synthesize_online_first_over_all": round(
            sum(f for f, _ in synthesis) / sum(a for _, a in synthesis), 3),
    }
    for way, table in result["wer"].items():
        print(f"WER {way:20s} " + "  ".join(f"{n.removeprefix('en-US_')[:12]} {v:.0%}"
                                            for n, v in table.items()))
    print("Recognize time / audio length:", result["recognize_time_over_audio"])
    print("SynthesizeOnline first audio ms:", result["synthesize_online_first_audio_ms"],
          "all audio ms:", result["synthesize_online_all_audio_ms"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()
