"""Where does `coredump-shipper ship` spend its CPU? py-spy on one upload to the null sink.

Run from the repository root: `python -m bench.studies.profile [--size-mib 1024] [--compression zstd]
[--plain]`; the endpoint is HTTPS with a private CA unless `--plain`.
Prints the top frames by own time and by inclusive time, and a breakdown by kind of work; keeps
the raw py-spy stacks (flamegraph input) in bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.contestants import BUCKET, REPO, SHIPPER, child_env
from bench.inputs import MiB, make_realistic_core, warm_page_cache
from bench.targets import https_target, run_nullsink

PY_SPY = REPO / ".cache" / "bench-venv" / "bin" / "py-spy"
RESULTS = REPO / "bench" / "results"

# Frames that only say "a thread or an event loop is running": never the answer to "where".
_PLUMBING = re.compile(
    r"^(0x[0-9a-f]+ |thread \(|thread_run|Thread\.|_worker |_WorkItem\.run|<module> \(coredump-shipper|"
    r"main \(coredump_shipper/cli|run \(asyncio|Runner\.run|BaseEventLoop\.|Handle\._run|"
    r"task_step|TaskStepMethWrapper|_PyEval|PyObject_|_PyObject_|method_vectorcall|cfunction_)"
)
# Kinds of work, matched against any frame of a stack, first match wins.
_KINDS = (
    ("SHA-256: SigV4 payload hash (botocore)", r"(SHA256|EVP_hash).*SigV4Auth"),
    ("SHA-256: the shipper's own (coredump_shipper/)", r"(SHA256|EVP_hash).*coredump_shipper/"),
    ("SHA-256: other", r"SHA256|sha256|EVP_hash|EVP_update"),
    ("TLS encryption (ssl)", r"aes|AES|gcm_|ssl3_|SSL_write|_ssl__SSL"),
    ("MD5 / CRC (checksums)", r"MD5|md5|crc32|Crc32|crc32c"),
    ("zstd compression", r"ZSTD_|zstd|compress"),
    ("file reads (pread/preadv)", r"pread|read \(libc"),
    ("socket sends", r"\bsend|sendmsg|writev|_write_to_self|transport.*write"),
    ("imports at start-up", r"_find_and_load|_compile_bytecode"),
    ("garbage collection", r"gc_collect"),
    ("botocore request building and signing", r"botocore/|aiobotocore/"),
    ("aiohttp", r"aiohttp/"),
)


# A thread parked in one of these is waiting, not working, even if py-spy sampled it as active.
_WAITING = re.compile(
    r"epoll_wait|PyThread_acquire_lock_timed|pthread_cond_(timed)?wait|SimpleQueue_get|"
    r"select \(|poll \(|sem_(timed)?wait|futex"
)


_THREAD = re.compile(r"^thread \((\d+)\)(?:: (.*))?$")


@dataclass(frozen=True)
class Profile:
    """Collapsed stacks from `py-spy record --format raw`: frame list -> samples."""

    stacks: list[tuple[list[str], int]]

    @classmethod
    def load(cls, path: Path) -> Profile:
        stacks: list[tuple[list[str], int]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
        return cls(stacks)

    @property
    def total(self) -> int:
        return sum(count for _, count in self.stacks)

    def working(self) -> Profile:
        """Only the samples of threads doing work (see _WAITING)."""
        return Profile([(f, n) for f, n in self.stacks if not any(_WAITING.search(x) for x in f[-4:])])

    def own(self) -> Counter[str]:
        """Own time per frame; an unnamed native leaf is charged as `lib code in <caller>`."""
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            counts[_leaf(frames)] += count
        return counts

    def inclusive(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            for frame in set(frames):
                if not _PLUMBING.match(frame):
                    counts[frame] += count
        return counts

    def threads(self) -> Counter[str]:
        """Samples per thread, pools folded together (`asyncio_0`, `asyncio_1` -> `asyncio_*`)."""
        names: dict[str, str] = {}
        for frames, _ in self.stacks:
            match = _THREAD.match(frames[0])
            if match and match.group(2):
                names[match.group(1)] = re.sub(r"_\d+$", "_*", match.group(2))
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            match = _THREAD.match(frames[0])
            # py-spy names a thread only once it has seen its name; earlier samples carry the id.
            counts[names.get(match.group(1), "?") if match else "?"] += count
        return counts

    def kinds(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            joined = ";".join(reversed(frames))
            for label, pattern in _KINDS:
                if re.search(pattern, joined):
                    counts[label] += count
                    break
            else:
                counts["other Python (asyncio, bookkeeping, copies)"] += count
        return counts


def _leaf(frames: Sequence[str]) -> str:
    leaf = frames[-1]
    match = re.match(r"^0x[0-9a-f]+ \((.+)\)$", leaf)
    if not match:
        return leaf
    caller = next((f for f in reversed(frames) if not f.startswith("0x")), "?")
    return f"[{match.group(1)} code] in {caller}"


def _table(title: str, counts: Iterable[tuple[str, int]], total: int) -> str:
    lines = [f"| {title} | Share |", "|---|---|"]
    lines += [f"| `{frame}` | {count / total:.1%} |" for frame, count in counts]
    return "\n".join(lines)


def record(argv: Sequence[str], env: dict[str, str], out: Path, rate: int, native: bool) -> int:
    spy = [str(PY_SPY), "record", "--rate", str(rate), "--threads", "--format", "raw"]
    spy += ["--output", str(out)]
    if native:
        spy.append("--native")
    done = subprocess.run([*spy, "--", *argv], env=env, check=False)
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--compression", default="zstd")
    parser.add_argument("--rate", type=int, default=100, help="samples per second per thread")
    parser.add_argument("--no-native", action="store_true", help="Python frames only")
    parser.add_argument("--plain", action="store_true", help="plain HTTP (default: HTTPS, private CA)")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = RESULTS / f"profile-{stamp}.txt"
    with tempfile.TemporaryDirectory(prefix="cds-profile-") as tmp:
        work = Path(tmp)
        core = make_realistic_core(work / "core.realistic", args.size_mib * MiB)
        with run_nullsink(work) as sink, contextlib.ExitStack() as stack:
            endpoint = sink.endpoint
            if not args.plain:
                endpoint = stack.enter_context(https_target("https", sink, work)).endpoint
            warm_page_cache(core)
            ship = [
                str(SHIPPER),
                "ship",
                "--bucket",
                BUCKET,
                "--endpoint-url",
                endpoint.url,
                *(["--ca-bundle", endpoint.ca_bundle] if endpoint.ca_bundle else []),
                "--compression",
                args.compression,
                str(core),
            ]
            code = record(ship, child_env(endpoint), raw, args.rate, not args.no_native)
    if code != 0:
        print(f"py-spy or the shipper failed (exit {code})", file=sys.stderr)
        return 1
    everything = Profile.load(raw)
    profile = everything.working()
    total = profile.total or 1
    print(
        f"{everything.total} samples, {profile.total} of them working (shares below are of "
        f"those); {args.size_mib} MiB realistic core, --compression {args.compression}"
    )
    print()
    busy = [
        (f"{name}: {count / args.rate:.2f} s busy", count) for name, count in profile.threads().most_common()
    ]
    print(_table("Thread (samples / rate = seconds on CPU, roughly)", busy, total))
    print()
    print(_table("Kind of work", profile.kinds().most_common(), total))
    print()
    print(_table(f"Top {args.top} frames by own time", profile.own().most_common(args.top), total))
    print()
    print(_table("Top frames, inclusive", profile.inclusive().most_common(args.top * 2), total))
    print(f"\nraw stacks (flamegraph.pl input): {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
