"""The `voxline` command line: every command and its flags (what `voxline --help` shows).

Apart from the commands that run them (`cli.py`), so the documentation's CLI reference
and its check of the documented commands read the same parser without starting anything.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from voxline import __version__


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each command's parser sets `run` to the command's name."""
    parser = argparse.ArgumentParser(prog="voxline", description="Voxline voice agent server")
    parser.add_argument("--version", action="version", version=f"voxline {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from config: 50051; 0 = any)")
    serve.add_argument("--config", type=Path, help="YAML config file")
    serve.add_argument("--metrics-port", type=int,
                       help="serve Prometheus metrics on this port (0 = any free port)")
    serve.add_argument("--console-port", type=int, metavar="PORT",
                       help="serve the supervisors' web console on this port (0 = any)")
    for name, what in (("sip", "SIP (UDP and TCP) with RTP"),
                       ("twilio", "Twilio / Telnyx Media Streams (WebSocket)"),
                       ("audiosocket", "Asterisk AudioSocket (TCP)"),
                       ("vonage", "Vonage Voice WebSocket")):
        serve.add_argument(f"--{name}-port", type=int, metavar="PORT",
                           help=f"answer {what} calls on this port (0 = any free port)")
    serve.set_defaults(run="serve")

    calls = sub.add_parser("calls", help="list recent call records")
    calls.add_argument("--config", type=Path, help="YAML config file (for records.path)")
    calls.add_argument("--db", type=Path, help="records database (default: from config)")
    calls.add_argument("--limit", type=int, default=50, help="newest N calls")
    calls.add_argument("--tenant", default="", help="only this tenant's calls")
    calls.add_argument("--json", action="store_true", help="one JSON object per call")
    calls.add_argument("--call", default="", metavar="CALL_ID",
                       help="one call's record in full, turn by turn")
    calls.add_argument("--recording", action="store_true",
                       help="only calls with a recording: when, length and the file")
    calls.add_argument("--recording-out", default="", metavar="FILE",
                       help="with --call: copy that call's recording (stereo WAV) to FILE")
    calls.set_defaults(run="calls")

    # How a client reaches the server.
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT")
    client.add_argument("--tls-ca", type=Path, help="CA certificate of the server (TLS)")
    client.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    client.add_argument("--tls-key", type=Path, help="client private key (mutual TLS)")
    client.add_argument("--api-key-env", default="VOXLINE_API_KEY",
                        help="environment variable holding the API key, if any")

    models = sub.add_parser("models", help="manage the server's models")
    models_sub = models.add_subparsers(dest="action", required=True)
    reload_cmd = models_sub.add_parser(
        "reload", parents=[client],
        help="load changed manifests; calls in progress finish on the old models")
    reload_cmd.set_defaults(run="models reload")

    # What `call` and `bench` share: they both act as a gateway.
    gateway = argparse.ArgumentParser(add_help=False, parents=[client])
    gateway.add_argument("--codec", choices=["pcm16", "mulaw", "alaw"], default="pcm16")
    gateway.add_argument("--transport", default="grpc",
                         choices=["grpc", "sip", "twilio", "audiosocket", "vonage"],
                         help="call over this protocol, as that platform would (not grpc: "
                              "the protocol's own codec and rate; --codec does not apply)")
    gateway.add_argument("--to", default="", metavar="HOST:PORT",
                         help="the telephony listener (default: the port the server at "
                              "--server reports for --transport)")
    gateway.add_argument("--fast", action="store_true", help="do not pace caller audio")
    gateway.add_argument("--speed", type=float, default=1.0, metavar="X",
                         help="send caller audio at X times real time (a burst after "
                              "network jitter); --fast: as fast as possible")
    gateway.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per reply")
    gateway.add_argument("--end-of-turn-ms", type=int, default=0,
                         help="silence that ends a caller turn (default: the server's)")

    call = sub.add_parser("call", parents=[gateway],
                          help="place a call as a gateway would, one recording per turn")
    call.add_argument("audio", nargs="+",
                      help="recordings (wav, flac...), one per caller turn; dtmf:KEYS presses keys")
    call.add_argument("--rate", type=int, choices=[8000, 16000], default=16000,
                      help="sample rate of the call")
    call.add_argument("--profile", default="", help="agent profile (default: server's)")
    call.add_argument("--out", help="write both sides of the call to this stereo WAV "
                                    "(caller left, agent right, as heard)")
    call.add_argument("--json", action="store_true", help="one JSON object per line")
    call.add_argument("--resume", default="", metavar="TOKEN",
                      help="continue a broken call (its `accepted` event's resume_token)")
    call.add_argument("--cut", action="store_true",
                      help="after the last turn break the stream (as a lost connection) "
                           "instead of hanging up")
    call.add_argument("--record", action="store_true",
                      help="the caller consents to recording (recorded where the profile "
                           "or tenant opts in)")
    call.set_defaults(run="call")

    demo = sub.add_parser("demo", parents=[client],
                          help="place the demo call: real recordings ordering coffee")
    demo.add_argument("--call-id", default="", help="its call id (default: demo-TIME)")
    demo.add_argument("--out", help="write both sides of the call to this stereo WAV")
    demo.add_argument("--json", action="store_true", help="one JSON object per line")
    demo.set_defaults(run="demo")

    bench = sub.add_parser("bench", parents=[gateway],
                           help="load a running server with concurrent scripted calls")
    bench.add_argument("--data", type=Path, action="append",
                       help="folder of recordings with a manifest.tsv; repeat for several "
                            "(default: ../shared/data/speech/read_misc)")
    bench.add_argument("--files", nargs="+", metavar="NAME",
                       help="only these recordings of the folders (file names; a name "
                            "without an extension matches any)")
    bench.add_argument("--file-list", type=Path,
                       help="a text file of recording names, one a line (# comments)")
    bench.add_argument("--calls", type=int, default=1, help="concurrent calls")
    bench.add_argument("--total-calls", type=int, default=0,
                       help="calls to place in all (default: --calls)")
    bench.add_argument("--sample-rate", type=int, choices=[8000, 16000], default=16000,
                       help="sample rate of the calls")
    bench.add_argument("--rate", type=float, default=0.0,
                       help="Poisson arrivals, calls per second (instead of --calls)")
    bench.add_argument("--duration", type=float, default=0.0,
                       help="seconds during which calls start (instead of a count)")
    bench.add_argument("--turns", type=int, default=2, help="caller turns per call")
    bench.add_argument("--ramp", type=float, default=1.0, help="seconds to start all calls")
    bench.add_argument("--barge-in-share", type=float, default=0.0,
                       help="share of agent replies the caller talks over (0..1)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the callers' scripts")
    bench.add_argument("--json", type=Path, help="write every turn and the summary here")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.add_argument("--plot", type=Path, help="write a latency plot (PNG) here")
    bench.add_argument("--sweep", action="store_true",
                       help="double concurrency from 1 until the budget or a failure")
    bench.add_argument("--budget-ms", type=float, default=1000.0,
                       help="p95 voice-to-voice budget of a sweep")
    bench.add_argument("--max-calls", type=int, default=64, help="sweep ceiling")
    bench.set_defaults(run="bench")

    return parser


def commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser, then each of its commands and their sub-commands, in order."""
    yield parser
    for action in parser._actions:  # argparse keeps its sub-commands only there
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from commands(sub)
