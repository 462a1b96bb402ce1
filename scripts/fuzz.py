"""Throw mutated frames, handshakes, wlogs and wdiffs at walbops' parsers and at a live agent.

Every input must end in a clean refusal (a walbops error: FormatError, ProtocolError, UsageError
…) or be accepted as valid; anything else (another exception, a hang, an agent that dies or logs a
traceback) is a failure, and its input is saved under --save for a regression test. Prints one
JSON object: per target how many inputs were tried, refused and accepted, and the failures.

    ./scripts/fuzz [--count 100000] [--seconds 900] [--seed N] [--save DIR]

Not in CI: it is bounded by --count and --seconds, but it is long.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walbops.diff.engine import convert_to_indexed, convert_to_sorted, log_ios
from walbops.diff.files import iter_diff, verify_wdiff
from walbops.diff.gen import GenConfig, generate_wlog
from walbops.diff.logs import WlogReader
from walbops.errors import WalbopsError
from walbops.net import messages
from walbops.net.auth import ServerHandshake, write_key
from walbops.net.frames import (
    HEADER,
    MAX_HANDSHAKE_PAYLOAD,
    FrameDecoder,
    FrameType,
    JsonFrame,
    encode_data,
    encode_json,
)
from walbops.net.transport import open_connection

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
INTERESTING_WORDS = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\xff\xff\xff\x7f",
                     b"\x00\x10\x00\x00"]


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tried": self.tried, "ended_cleanly": self.tried - len(self.failures), "refused": self.refused,
                "accepted": self.accepted, "failures": len(self.failures), "first_failures": self.failures[:5]}


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random mutations: bit flips, interesting bytes or words, cuts, inserts, repeats."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randrange(len(out)) if out else 0
        if kind == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[at] = rng.choice(INTERESTING)
        elif kind == 2 and len(out) >= 4:
            at = rng.randrange(len(out) - 3)
            out[at:at + 4] = rng.choice(INTERESTING_WORDS)
        elif kind == 3:
            del out[at:at + rng.randint(1, 64)]
        elif kind == 4:
            out[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == 5 and out:
            end = min(len(out), at + rng.randint(1, 256))
            out[at:at] = out[at:end]
        else:
            out = out[:at]  # truncated
    return bytes(out)


def judge(tally: Tally, name: str, data: bytes, run: Callable[[], None], save: Path) -> None:
    tally.tried += 1
    try:
        run()
    except WalbopsError:
        tally.refused += 1
    except Exception as exc:  # the point of a fuzzer: anything but a walbops error is a bug
        path = save / f"{name}-{tally.tried}.bin"
        path.write_bytes(data)
        tally.failures.append({"input": str(path), "error": f"{type(exc).__name__}: {exc}"[:300]})
    else:
        tally.accepted += 1


# --- the parsers --------------------------------------------------------------------------------

def seed_frames() -> list[bytes]:
    return [encode_json(messages.hello("s0", "storage", "00" * 32)),
            encode_json(messages.request(1, "get", {"target": "state", "vol": "vol0"})),
            encode_json(messages.response(1, {"accepted": True})),
            encode_json(messages.end(10, "0000abcd", 3)),
            encode_data(b"x" * 3000), encode_data(bytes(5000))]


def fuzz_frames(count: int, rng: random.Random, save: Path) -> Tally:
    tally, seeds = Tally(), seed_frames()
    for _ in range(count):
        data = mutate(rng.choice(seeds) + rng.choice(seeds), rng)

        def parse(data: bytes = data) -> None:
            decoder = FrameDecoder(rng.choice([MAX_HANDSHAKE_PAYLOAD, 1 << 20]))
            decoder.feed(data)
            for frame in decoder:
                if hasattr(frame, "message"):
                    messages.validate(frame.message)
            decoder.eof()

        judge(tally, "frame", data, parse, save)
    return tally


def fuzz_handshakes(count: int, rng: random.Random, save: Path) -> Tally:
    """A server's side of the handshake fed a mutated hello and auth, each through the frame
    decoder as a connection would deliver them (bad JSON is refused there)."""
    tally = Tally()
    hello = json.dumps(messages.hello("s0", "storage", "ab" * 32)).encode()
    auth = json.dumps(messages.auth("cd" * 32)).encode()
    for _ in range(count):
        first, second = mutate(hello, rng), mutate(auth, rng) if rng.random() < 0.5 else auth

        def run(first: bytes = first, second: bytes = second) -> None:
            server = ServerHandshake(bytes(32), "a0", "archive")
            decoder = FrameDecoder(MAX_HANDSHAKE_PAYLOAD)
            for payload in (first, second):
                decoder.feed(HEADER.pack(len(payload) + 1, FrameType.JSON) + payload)
                frame = decoder.next_frame()
                if not isinstance(frame, JsonFrame):
                    raise AssertionError("a whole frame was fed")
                server.receive(frame.message)

        judge(tally, "handshake", first + b"\n" + second, run, save)
    return tally


def seed_wlogs() -> list[bytes]:
    seeds = []
    for seed, pbs in ((1, 512), (2, 4096)):
        raw = io.BytesIO()
        generate_wlog(raw, GenConfig(device_lb=2048, log_pb=64 if pbs == 4096 else 256, pbs=pbs, seed=seed,
                                     max_io_lb=64, discard_pct=10))
        seeds.append(raw.getvalue())
    return seeds


def fuzz_wlogs(count: int, rng: random.Random, save: Path, seeds: list[bytes]) -> Tally:
    tally = Tally()
    for _ in range(count):
        data = mutate(rng.choice(seeds), rng)

        def run(data: bytes = data) -> None:
            for io_ in log_ios(WlogReader(io.BytesIO(data), "fuzz.wlog")):
                if io_.kind == 0:
                    io_.data()

        judge(tally, "wlog", data, run, save)
    return tally


def seed_wdiffs(wlogs: list[bytes]) -> list[bytes]:
    seeds = []
    for raw in wlogs:
        for convert in (convert_to_sorted, convert_to_indexed):
            out = io.BytesIO()
            convert(log_ios(WlogReader(io.BytesIO(raw), "seed.wlog")), out, bytes(16))
            seeds.append(out.getvalue())
    return seeds


def fuzz_wdiffs(count: int, rng: random.Random, save: Path, seeds: list[bytes], scratch: Path) -> Tally:
    tally = Tally()
    path = scratch / "fuzz.wdiff"
    for _ in range(count):
        data = mutate(rng.choice(seeds), rng)
        path.write_bytes(data)

        def run() -> None:
            verify_wdiff(str(path))
            for io_ in iter_diff(str(path)):  # as a redo reads it, once verify passed
                if io_.kind == 0:
                    io_.data()

        judge(tally, "wdiff", data, run, save)
    return tally


# --- a live agent -------------------------------------------------------------------------------

@contextlib.contextmanager
def live_archive(scratch: Path) -> Iterator[tuple[int, bytes, Path, subprocess.Popen[bytes]]]:
    key_file = scratch / "cluster.key"
    key = write_key(key_file)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = scratch / "a0.log"
    process = subprocess.Popen([sys.executable, "-m", "walbops.cli.main", "agent", "archive", "--listen",
                                "127.0.0.1", "--port", str(port), "--id", "a0", "--base-dir", str(scratch / "a0"),
                                "--cluster-key-file", str(key_file), "--log-file", str(log)])
    deadline = time.monotonic() + 30
    while "listening" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("the archive agent did not start")
        time.sleep(0.05)
    try:
        yield port, key, log, process
    finally:
        process.terminate()
        process.wait(timeout=60)


async def _send_raw(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(OSError):
            await writer.drain()
            writer.write_eof()
        async with asyncio.timeout(15):  # the server answers or closes within its handshake deadline
            while await reader.read(1 << 16):
                pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _send_requests(port: int, key: bytes, frames: list[bytes]) -> None:
    channel = await open_connection("127.0.0.1", port, key, "fuzz", "controller")
    async with channel:
        for frame in frames:
            channel._writer.write(frame)  # below the channel's own checks: what a hostile client sends
        await channel._writer.drain()
        # Read what comes back for a moment: answers, refusals, or the server closing on us.
        with contextlib.suppress(WalbopsError, OSError, TimeoutError):
            async with asyncio.timeout(0.3):
                while True:
                    await channel.recv()


def fuzz_agent(count: int, rng: random.Random, save: Path, scratch: Path) -> Tally:
    tally = Tally()
    samples: list[tuple[str, dict[str, Any]]] = [
        ("get", {"target": "restored-path", "vol": "vol0", "args": 3}), ("status", {"vol": "vol0"}),
        ("init-vol", {"vol": "vol0"}), ("restore", {"vol": "vol0", "gid": 0}),
        ("merge", {"vol": "vol0", "gid_b": 0, "max_size": 10}), (messages.WDIFF_TRANSFER, {"vol": "vol0"})]
    requests = [encode_json(messages.request(n, command, args)) for n, (command, args) in enumerate(samples, 1)]
    hello = encode_json(messages.hello("x", "storage", "ab" * 32))
    with live_archive(scratch) as (port, key, log, process):
        for index in range(count):
            if index % 2:  # before the handshake: garbage, or a mutated hello or frame
                frames = [mutate(hello if rng.random() < 0.5 else rng.choice(seed_frames()), rng)]
            else:  # after it: mutated requests
                frames = [mutate(rng.choice(requests), rng) for _ in range(rng.randint(1, 3))]
            data = b"".join(frames)
            attempt = functools.partial(_attempt, port, key, frames, authenticated=index % 2 == 0)
            judge(tally, "agent", data, attempt, save)
            if process.poll() is not None:
                tally.failures.append({"input": "(the agent exited)", "error": f"exit code {process.returncode}"})
                break
        text = log.read_text()
        if "Traceback" in text or "internal error" in text:
            tally.failures.append({"input": str(log), "error": "the agent logged a traceback"})
        alive = process.poll() is None and asyncio.run(_status(port, key))
        if not alive:
            tally.failures.append({"input": "(after the fuzzing)", "error": "the agent does not answer status"})
    return tally


def _attempt(port: int, key: bytes, frames: list[bytes], authenticated: bool) -> None:
    # The client side may see anything (a refusal, a closed connection): only the agent is judged.
    with contextlib.suppress(WalbopsError, OSError):
        asyncio.run(_send_requests(port, key, frames) if authenticated else _send_raw(port, b"".join(frames)))


async def _status(port: int, key: bytes) -> bool:
    channel = await open_connection("127.0.0.1", port, key, "fuzz", "controller")
    async with channel:
        return (await channel.request("status"))["host_type"] == "archive"


def run_slice(name: str, count: int, rng: random.Random, save: Path, scratch: Path, wlogs: list[bytes],
              wdiffs: list[bytes]) -> Tally:
    if name == "frames":
        return fuzz_frames(count, rng, save)
    if name == "handshakes":
        return fuzz_handshakes(count, rng, save)
    if name == "wlogs":
        return fuzz_wlogs(count, rng, save, wlogs)
    if name == "wdiffs":
        return fuzz_wdiffs(count, rng, save, wdiffs, scratch)
    return fuzz_agent(count, rng, save, scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs in all")
    parser.add_argument("--seconds", type=float, default=900, help="stop a target's loop past this budget [s]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", default=None, help="where failing inputs go (default: a temporary directory)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="walbops-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    save = Path(args.save or scratch / "failures")
    save.mkdir(parents=True, exist_ok=True)
    shares = {"frames": 0.35, "handshakes": 0.2, "wlogs": 0.2, "wdiffs": 0.15, "agent": 0.1}
    wlogs = seed_wlogs()
    wdiffs = seed_wdiffs(wlogs)
    budget = args.seconds / len(shares)
    started = time.monotonic()
    results: dict[str, Any] = {}
    for name, share in shares.items():
        count = max(1, int(args.count * share))
        began = time.monotonic()
        tally = Tally()
        # In slices, so that a slow target stops at its share of the time budget.
        while tally.tried < count and time.monotonic() - began < budget:
            step = count - tally.tried if name == "agent" else min(500, count - tally.tried)
            part = run_slice(name, step, rng, save, scratch, wlogs, wdiffs)
            tally.tried += part.tried
            tally.refused += part.refused
            tally.accepted += part.accepted
            tally.failures += part.failures
            if name == "agent":
                break
        results[name] = {**tally.as_dict(), "seconds": round(time.monotonic() - began, 1)}
    tried = sum(result["tried"] for result in results.values())
    failures = sum(result["failures"] for result in results.values())
    print(json.dumps({"fuzz": "walbops", "seed": args.seed, "inputs": tried, "failures": failures,
                      "every_input_ended_cleanly": failures == 0, "targets": results,
                      "seconds": round(time.monotonic() - started, 1), "failing_inputs": str(save)}, indent=2))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
