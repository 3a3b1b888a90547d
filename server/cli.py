"""The `voxline` command: what each command does (its flags are in `cli_parser.py`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from voxline import __version__
from voxline.cli_parser import build_parser

if TYPE_CHECKING:  # the CLI imports heavy modules only for the command that runs
    from voxline.audio.formats import CallAudioFormat
    from voxline.client.connect import Connection
    from voxline.client.gateway import CallResult
    from voxline.transport.server import Serving


def _serve(args: argparse.Namespace) -> int:
    from voxline.agent.profile import ProfileError
    from voxline.config import load_settings
    from voxline.engines.repository import ModelError
    from voxline.records import RedactingFilter
    from voxline.runtime import Runtime
    from voxline.transport.gate import ConfigError
    from voxline.transport.server import start_server
    from voxline.workers import Background

    settings = load_settings(args.config)
    if args.host:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    if args.metrics_port is not None:
        settings.server.metrics_port = args.metrics_port
    if args.console_port is not None:
        settings.console.port = args.console_port
    for name in ("sip", "twilio", "audiosocket", "vonage"):
        if (port := getattr(args, f"{name}_port")) is not None:
            getattr(settings.telephony, name).port = port
    if settings.records.redact:  # transcripts in logs get the same redaction as records
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactingFilter())
    try:
        runtime = Runtime.load(settings)
    except (ModelError, ProfileError) as exc:
        print(f"voxline: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        serving = await start_server(runtime, settings.server.host, settings.server.port)
        for m in runtime.models.values():
            print(f"model {m.manifest.kind}: {m.name} ({m.manifest.engine}, "
                  f"{m.manifest.device}/{m.manifest.compute_type}) from {m.weights}", flush=True)
        if settings.server.metrics_port is not None:
            port = runtime.metrics.serve(settings.server.host, settings.server.metrics_port)
            print(f"metrics on http://{settings.server.host}:{port}/metrics", flush=True)
        for listening in serving.telephony:
            print(f"telephony {listening.name} on {settings.server.host}:{listening.port}",
                  flush=True)
        if serving.console is not None:
            print(f"console on {serving.console.url}", flush=True)
            if serving.console.login_url:  # no tenants: this link is the only way in
                print(f"console log-in link (no tenants are configured; it changes at each "
                      f"start): {serving.console.login_url}", flush=True)
        tls = " (TLS)" if settings.tls.cert_file else ""
        print(f"voxline {__version__} listening on {settings.server.host}:{serving.port}{tls}",
              flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        background = Background()  # keeps each reload's task, and logs its failure
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: background.spawn(_reload(serving), "reload"))
        await stop.wait()
        # A second signal stops at once instead of waiting for the calls.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: os._exit(1))
        await serving.drain_and_stop()

    try:
        asyncio.run(main())
    except ConfigError as exc:
        print(f"voxline: {exc}", file=sys.stderr)
        return 2
    finally:
        runtime.close()
    return 0


async def _reload(serving: Serving) -> None:
    from voxline.errors import ServiceError

    try:
        await serving.service.generations.reload()
    except ServiceError as exc:
        logging.getLogger("voxline").error("%s", exc.message)


def _connection(args: argparse.Namespace) -> Connection:
    from voxline.client.connect import Connection

    return Connection.from_args(args.server, args.tls_ca, args.tls_cert, args.tls_key,
                                args.api_key_env)


def _calls(args: argparse.Namespace) -> int:
    from voxline.config import load_settings
    from voxline.record_store import RecordStore
    from voxline.records import describe, recordings_dir

    settings = load_settings(args.config)
    path = args.db or settings.records.path
    if not path.is_file():
        print(f"voxline calls: no call records at {path}", file=sys.stderr)
        return 2
    # Read-only: listing never deletes or changes a record (retention is the server's).
    store = RecordStore(path, read_only=True)
    folder = recordings_dir(path)
    if args.recording_out and not args.call:
        print("voxline calls: --recording-out needs --call CALL_ID", file=sys.stderr)
        return 2
    if args.call:
        rec = store.find(args.call)
        if rec is None:
            print(f"voxline calls: no record of call {args.call} in {path}", file=sys.stderr)
            return 1
        if args.recording_out:
            return _copy_recording(rec, folder, args.recording_out)
        print(json.dumps(rec) if args.json else "\n".join(describe(rec)))
        return 0
    for rec in store.recent(args.limit, args.tenant, recorded=args.recording):
        if args.json:
            print(json.dumps(rec), flush=True)
            continue
        if args.recording:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["started_at"]))
            print(f"{when}  {rec['call_id']:<24} {rec['recording_s']:7.1f} s  "
                  f"{folder / rec['recording']}")
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["started_at"]))
        cost = rec["cost"]
        tools = sum(len(t["tools"]) for t in rec["turns"])
        print(f"{when}  {rec['call_id']:<24} {rec['profile']:<14} {rec['duration_s']:7.1f} s  "
              f"{len(rec['turns']):3d} turns  {tools:2d} tools  {rec['reason']:<16} "
              f"{cost['total']:.4f} {cost['currency']}")
    return 0


def _copy_recording(rec: dict, folder: Path, out: str) -> int:
    """Copy one call's recording out of the recordings folder."""
    import shutil

    if not rec.get("recording"):
        print(f"voxline calls: call {rec['call_id']} was not recorded", file=sys.stderr)
        return 1
    source = folder / Path(rec["recording"]).name
    if not source.is_file():
        print(f"voxline calls: the recording of call {rec['call_id']} is gone from {folder} "
              "(deleted by hand, or past records.retention_days)", file=sys.stderr)
        return 1
    # The copy is as private as the recording: created 0600 before a byte is written.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT
    with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst)
    print(f"recording of call {rec['call_id']} ({rec['recording_s']:.1f} s, stereo: caller "
          f"left, agent right) copied to {out}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import grpc

    from voxline.v1 import voice_agent_pb2 as pb
    from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

    conn = _connection(args)

    async def reload() -> pb.ReloadModelsResponse:
        async with conn.channel() as channel:
            return await pb_grpc.VoiceAgentStub(channel).ReloadModels(
                pb.ReloadModelsRequest(), metadata=conn.metadata, timeout=600)

    try:
        reply = asyncio.run(reload())
    except grpc.aio.AioRpcError as exc:
        print(f"voxline models reload: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    changed = ", ".join(reply.reloaded) or "nothing changed"
    print(f"model generation {reply.model_generation}: {changed}; "
          f"{reply.calls_on_old_models} calls still on the previous models")
    return 0


def _call(args: argparse.Namespace) -> int:
    from voxline.audio.formats import CallAudioFormat, Encoding
    from voxline.client.gateway import CallOptions, load_recording, place_call

    opts = CallOptions(encoding=Encoding(args.codec), rate=args.rate, profile=args.profile,
                       fast=args.fast, speed=args.speed, reply_timeout_s=args.timeout,
                       end_of_turn_ms=args.end_of_turn_ms, resume_token=args.resume,
                       cut_at_end=args.cut, keep_audio=bool(args.out), record=args.record)
    if args.record and args.transport == "audiosocket":
        print("voxline call: AudioSocket carries no consent; the listener's "
              "telephony.audiosocket.record decides", file=sys.stderr)
    wire = args.transport != "grpc"
    if wire:
        from voxline.client.wire import place_wire_call, wire_rate

        opts.rate = wire_rate(args.transport)  # the protocol's own, whatever --rate says
    turns: list = []
    for path in args.audio:
        if path.startswith("dtmf:"):
            turns.append(path.removeprefix("dtmf:"))
            continue
        if not Path(path).is_file():
            print(f"voxline call: no such file: {path}", file=sys.stderr)
            return 2
        turns.append(load_recording(path, opts.rate))
    if not wire:
        result = asyncio.run(place_call(_connection(args), turns, opts, _printer(args.json)))
        return _call_done(result, args.out, args.json, CallAudioFormat(opts.encoding, opts.rate))
    result = asyncio.run(place_wire_call(args.transport, _listener(args), turns, opts,
                                         _printer(args.json), _connection(args).api_key))
    # A wire client keeps both sides as 16-bit PCM at the protocol's rate.
    return _call_done(result, args.out, args.json, CallAudioFormat(Encoding.PCM16, opts.rate))


def _listener(args: argparse.Namespace) -> str:
    """HOST:PORT of the telephony listener for --transport: --to, or the port the
    server reports in GetServerInfo (an operator's key when tenants are configured)."""
    if args.to:
        return args.to
    from voxline.v1 import voice_agent_pb2 as pb
    from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

    conn = _connection(args)

    async def ask() -> pb.ServerInfo:
        async with conn.channel() as channel:
            return await pb_grpc.VoiceAgentStub(channel).GetServerInfo(
                pb.ServerInfoRequest(), metadata=conn.metadata, timeout=10)

    info = asyncio.run(ask())
    ports = {t.name: t.port for t in info.transports}
    if args.transport not in ports:
        raise SystemExit(f"voxline: the server at {args.server} has no {args.transport} "
                         f"listener (it has: {', '.join(ports)}); see telephony: in the "
                         "config or pass --to HOST:PORT")
    return f"{args.server.rpartition(':')[0] or '127.0.0.1'}:{ports[args.transport]}"


def _demo(args: argparse.Namespace) -> int:
    from voxline.audio.formats import CallAudioFormat
    from voxline.client.demo import ENCODING, PROFILE, RATE, run_demo

    call_id = args.call_id or f"demo-{time.strftime('%Y%m%dT%H%M%S')}"  # not redacted in logs
    if not args.json:
        print(f"--- demo call {call_id}: real recordings, {ENCODING.value} {RATE} Hz at "
              f"real-time pace, agent profile {PROFILE}")
    result = asyncio.run(run_demo(_connection(args), call_id, _printer(args.json)))
    return _call_done(result, args.out, args.json, CallAudioFormat(ENCODING, RATE))


def _printer(as_json: bool):  # type: ignore[no-untyped-def]
    from voxline.client.conversation import Conversation

    conversation = Conversation(lambda line: print(line, flush=True))

    def on_event(event: dict) -> None:
        if event["type"] == "audio" or (event["type"] == "transcript"
                                        and not event["final"] and not as_json):
            return
        if as_json:
            print(json.dumps(event), flush=True)
        else:
            conversation(event)

    return on_event


def _call_done(result: CallResult, out: str | None, as_json: bool,
               fmt: CallAudioFormat) -> int:
    """Write the call's recording if asked; the exit status (1 on any error)."""
    if out:
        import soundfile as sf

        sf.write(out, result.stereo(fmt), fmt.sample_rate, subtype="PCM_16")
        if not as_json:
            print(f"both sides of the call written to {out} (caller left, agent right)")
    failed = result.error is not None or any(e["type"] == "error" for e in result.events)
    return 1 if failed else 0


def _bench(args: argparse.Namespace) -> int:
    from voxline.audio.formats import Encoding
    from voxline.bench import (
        BenchConfig,
        plot,
        print_summary,
        run_bench,
        run_sweep,
        write_json,
    )

    folders = args.data or [Path("../shared/data/speech/read_misc")]
    for folder in folders:
        if not (folder / "manifest.tsv").is_file():
            print(f"voxline bench: no manifest.tsv in {folder}", file=sys.stderr)
            return 2
    files = list(args.files or [])
    if args.file_list:
        files += [line.strip() for line in args.file_list.read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    if args.rate > 0 and not (args.total_calls or args.duration):
        print("voxline bench: --rate needs --total-calls or --duration", file=sys.stderr)
        return 2
    cfg = BenchConfig(server=_connection(args), data=folders, files=files, calls=args.calls,
                      rate=args.rate, duration_s=args.duration,
                      total_calls=args.total_calls, turns=args.turns, ramp_s=args.ramp,
                      encoding=Encoding(args.codec), sample_rate=args.sample_rate,
                      barge_in_share=args.barge_in_share, seed=args.seed, fast=args.fast,
                      speed=args.speed,
                      reply_timeout_s=args.timeout, end_of_turn_ms=args.end_of_turn_ms,
                      transport=args.transport,
                      transport_address=_listener(args) if args.transport != "grpc" else "")
    if args.sweep:
        report = asyncio.run(run_sweep(cfg, args.budget_ms, args.max_calls,
                                       progress=not args.quiet))
        for step in report["steps"]:
            print(f"--- {step['summary']['concurrency']} concurrent calls")
            print_summary(step)
        cap = report["capacity"]
        print(f"capacity: {cap['calls']} concurrent calls within p95 voice-to-voice "
              f"{cap['budget_ms']:.0f} ms (stopped at {cap['stopped_at']})")
        # A sweep ends on purpose at the first level that fails: the run itself fails
        # only when no level held.
        calls = {"failed": int(cap["calls"] == 0), "rejected": 0}
    else:
        try:
            report = asyncio.run(run_bench(cfg, progress=not args.quiet))
        except ValueError as exc:  # no such recording
            print(f"voxline bench: {exc}", file=sys.stderr)
            return 2
        print_summary(report)
        calls = report["summary"]["calls"]
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 1 if calls["failed"] or calls["rejected"] else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # libraries' per-request chatter; Voxline logs each call event
        for name in ("sentence_transformers", "httpx", "httpcore", "faster_whisper"):
            logging.getLogger(name).setLevel(logging.WARNING)
    commands = {"serve": _serve, "calls": _calls, "models reload": _models, "call": _call,
                "demo": _demo, "bench": _bench}
    return commands[args.run](args)


if __name__ == "__main__":
    sys.exit(main())
