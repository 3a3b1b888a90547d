"""Drives Debian's SIPp (sip-tester) for the SIP load test, and writes the caller audio it
plays: a classic pcap file of G.711 mu-law RTP packets (Ethernet/IPv4/UDP/RTP, 20 ms
each) made from a real recording, for the scenario's play_pcap_audio."""

from __future__ import annotations

import csv
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.sip.baresip import binary

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "voxline_caller.xml"

FRAME = 160  # samples in 20 ms at 8 kHz: one RTP packet's payload of PCMU


def mulaw(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> G.711 mu-law bytes (the ITU-T G.711 segment encoding)."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), 32635) + 0x84  # bias, so every segment has a 1
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7  # 0..7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_rtp_pcap(path: Path, samples_8k: np.ndarray, ssrc: int = 0x5EED1234,
                   src: tuple[str, int] = ("127.0.0.1", 6000),
                   dst: tuple[str, int] = ("127.0.0.1", 7000)) -> float:
    """8 kHz float32 audio as a pcap of RTP packets (PT 0, one per 20 ms, timestamps 20 ms
    apart); SIPp replaces the addresses with the call's. Returns the audio's seconds."""
    frames = len(samples_8k) // FRAME
    payload = mulaw(samples_8k[: frames * FRAME])
    src_ip, dst_ip = (bytes(map(int, a.split("."))) for a in (src[0], dst[0]))
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # 1: Ethernet
    for i in range(frames):
        rtp = struct.pack("!BBHII", 0x80, (0x80 if i == 0 else 0) | 0,
                          i & 0xFFFF, (i * FRAME) & 0xFFFFFFFF, ssrc)
        rtp += payload[i * FRAME:(i + 1) * FRAME]
        udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         src_ip, dst_ip)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
        frame += ip + udp
        at_us = i * 20_000
        out.append(struct.pack("<IIII", at_us // 1_000_000, at_us % 1_000_000,
                               len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))
    return frames * FRAME / 8000


@dataclass
class SippRun:
    returncode: int
    stats: dict[str, str]  # the last row of -trace_stat's CSV
    errors: str  # -trace_err's log: unexpected messages
    screen: str  # SIPp's own output


def run_uac(folder: Path, target: str, service: str, calls: int, pause_ms: int,
            timeout_s: float, scenario: Path = SCENARIO) -> SippRun:
    """SIPp as the caller: `calls` calls at once to `target` (HOST:PORT), each playing
    folder/caller.pcap, pausing `pause_ms` after it starts, then hanging up."""
    from tests.conftest import free_port

    stat, errors = folder / "sipp_stat.csv", folder / "sipp_errors.log"
    args = [binary("sipp"), target, "-sf", str(scenario), "-s", service,
            "-i", "127.0.0.1", "-p", str(free_port()),
            "-mi", "127.0.0.1", "-mp", str(free_port()),
            "-m", str(calls), "-l", str(calls), "-r", str(calls), "-rp", "1000",
            "-d", str(pause_ms), "-recv_timeout", "30000", "-max_recv_loops", "10000",
            "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-nostdin",
            "-trace_stat", "-stf", str(stat), "-fd", "1",
            "-trace_err", "-error_file", str(errors)]
    # the scenario names caller.pcap relative to where SIPp runs
    with open(folder / "sipp.out", "w") as screen:
        proc = subprocess.run(args, cwd=folder, stdin=subprocess.DEVNULL, stdout=screen,
                              stderr=subprocess.STDOUT, timeout=timeout_s + 30)
    rows = list(csv.DictReader(stat.open(), delimiter=";")) if stat.exists() else []
    return SippRun(proc.returncode, rows[-1] if rows else {},
                   errors.read_text(errors="replace") if errors.exists() else "",
                   (folder / "sipp.out").read_text(errors="replace"))
