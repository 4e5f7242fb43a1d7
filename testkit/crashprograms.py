"""Real programs crashed for real: C compiled with gcc (with and without frame pointers) and Go,
each run with its cwd in a directory so the kernel writes its core there (core_pattern `core`)."""

from __future__ import annotations

import fcntl
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from testkit.cores import cores_land_in_cwd, skip_reason
from testkit.receiver import LOCK_PATH

C_SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
__attribute__((noinline)) void site_a(int x) { if (x > 0) abort(); printf("a\n"); }
__attribute__((noinline)) void site_b(int x) { if (x > 0) abort(); printf("b\n"); }
__attribute__((noinline)) void segv(int *volatile p) { *p = 42; }
__attribute__((noinline)) size_t in_libc(void) { const char *volatile p = NULL; return strlen(p); }
__attribute__((noinline)) void big(void) {
  /* 4 GiB of address space, a few pages touched: the kernel writes a 4 GiB sparse core. */
  size_t size = (size_t)4 << 30;
  char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) exit(3);
  for (size_t i = 0; i < size; i += size / 8) p[i] = 1;
  abort();
}
__attribute__((noinline)) void middle(const char *how) {
  if (!strcmp(how, "a")) site_a(1);
  else if (!strcmp(how, "b")) site_b(1);
  else if (!strcmp(how, "big")) big();
  else if (!strcmp(how, "strlen")) printf("%zu\n", in_libc());
  else segv(NULL);
  printf("done\n");
}
int main(int argc, char **argv) { middle(argc > 1 ? argv[1] : "segv"); return 0; }
"""

GO_SOURCE = """package main

import (
	"os"
	"runtime/debug"
)

type T struct{ x int }

//go:noinline
func nilA(t *T) int { return t.x }

//go:noinline
func nilB(t *T) int { return t.x + 1 }

func main() {
	debug.SetTraceback("crash")
	var t *T
	if len(os.Args) > 1 && os.Args[1] == "b" {
		println(nilB(t))
	}
	println(nilA(t))
}
"""


def build_c(directory: Path, frame_pointers: bool) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    source = directory / "crashy.c"
    source.write_text(C_SOURCE)
    program = directory / ("crashy-fp" if frame_pointers else "crashy-nofp")
    flag = "-fno-omit-frame-pointer" if frame_pointers else "-fomit-frame-pointer"
    subprocess.run([gcc, "-O2", "-g", flag, "-o", str(program), str(source)], check=True)
    return program


def build_go(directory: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed")
    (directory / "main.go").write_text(GO_SOURCE)
    (directory / "go.mod").write_text("module crashy\n\ngo 1.19\n")
    program = directory / "crashy-go"
    # The build cache `make receiver` uses: the runtime is compiled once, not in every test run.
    cache = Path(__file__).resolve().parent.parent / ".cache"
    env = {
        **os.environ,
        "HOME": str(directory),
        "GOCACHE": str(cache / "go-build"),
        "GOPATH": str(cache / "gopath"),
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    subprocess.run([go, "build", "-o", str(program), "."], cwd=directory, env=env, check=True)
    return program


def _allow_cores() -> None:
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def crash(program: Path, how: str, directory: Path) -> Path:
    """Run `program how` with cwd=directory; the core the kernel wrote there.

    Holds the core_pattern lock shared, so a test that points the pattern elsewhere (under the same
    lock, exclusively) cannot do so while this crash is written."""
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            return _crash(program, how, directory)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _crash(program: Path, how: str, directory: Path) -> Path:
    if not cores_land_in_cwd() or resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip(skip_reason())
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.iterdir())
    result = subprocess.run(
        [str(program), how], cwd=directory, preexec_fn=_allow_cores, capture_output=True, check=False
    )
    assert result.returncode < 0, f"{program} {how} did not crash: {result.returncode}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = [p for p in set(directory.iterdir()) - before if p.name.startswith("core")]
        if new:
            return new[0]
        time.sleep(0.02)
    pytest.skip(skip_reason())


_GDB_FRAME = re.compile(r"^#(\d+)\s+(?:(0x[0-9a-f]+) in )?(\S+)")


def gdb_backtrace(program: Path, core: Path) -> list[tuple[int, str]]:
    """(PC, function) of each frame of gdb's `bt` on the core (frame 0's PC from $pc)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("gdb is not installed")
    commands = ["-ex", "set backtrace past-main on", "-ex", "p/x $pc", "-ex", "bt"]
    out = subprocess.run(
        [gdb, "-nx", "-batch", *commands, str(program), str(core)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    pc = re.search(r"^\$1 = (0x[0-9a-f]+)", out, re.M)
    assert pc is not None, out
    frames: dict[int, tuple[int, str]] = {}
    for line in out.splitlines():
        match = _GDB_FRAME.match(line)
        if match is None:
            continue
        address = int(match.group(2) or pc.group(1), 16)
        frames.setdefault(int(match.group(1)), (address, match.group(3)))
    return [frames[n] for n in sorted(frames)]


def gdb_frames(program: Path, core: Path) -> list[int]:
    return [address for address, _ in gdb_backtrace(program, core)]
