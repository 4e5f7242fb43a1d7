"""Run a command and record what it alone cost: `python -S bench/launch.py RESULT.json CMD [ARG...]`.

Why the harness does not simply wait4() its children: Linux carries the parent's peak RSS into a
child's `ru_maxrss` across vfork/fork and exec, so every contestant's figure would be at least the
harness's own peak (~65 MiB after its imports, more after building inputs). This launcher is a
bare interpreter (~10 MiB), forks the command, reaps it with wait4 and writes wall seconds, user and
system CPU seconds and peak RSS (KiB) as JSON. SIGTERM and SIGINT are passed on to the command; the
exit status is the command's (128 + N if a signal N ended it).
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    result, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - argv is the benchmark's own command line
        except OSError as error:
            os.write(2, f"cannot start {argv[0]}: {error}\n".encode())
        os._exit(127)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: os.kill(pid, received))
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(result, "w", encoding="utf-8") as out:
        json.dump(
            {
                "wall_s": wall,
                "user_s": usage.ru_utime,
                "sys_s": usage.ru_stime,
                "max_rss_kib": usage.ru_maxrss,
                "returncode": code,
            },
            out,
        )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
