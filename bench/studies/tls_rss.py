"""Peak RSS of `coredump-shipper run` over HTTPS at the default parallelism: the chart's memory limit.

The daemon runs with its defaults (2 workers, 2 parts in flight of 8 MiB, zstd) against the
body-discarding sink behind haproxy terminating TLS (a private CA, so TLS buffers and certificate
checks are real). Cores are written so that both workers ship a multipart core at the same time,
then a burst of small cores follows; the figure is VmHWM (the peak since exec) of the daemon.

Run: `.venv/bin/python -m bench.studies.tls_rss [--core-mib 256] [--cores 4] [--small 50]`.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.contestants import BUCKET, SHIPPER, child_env
from bench.inputs import MiB, make_realistic_core
from bench.targets import haproxy_front, run_nullsink
from testkit.servers import free_port


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def measure(core_mib: int, cores: int, small: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="tls-rss-") as scratch:
        work = Path(scratch)
        watch = work / "cores"
        watch.mkdir()
        with run_nullsink(work) as sink, haproxy_front(sink.endpoint, work) as https:
            argv = [str(SHIPPER), "run", "--watch-dir", str(watch), "--bucket", BUCKET]
            argv += ["--listen", f"127.0.0.1:{free_port()}", "--storm-limit", "0"]
            log = (work / "daemon.log").open("wb")
            proc = subprocess.Popen(argv, env=child_env(https), stdout=log, stderr=subprocess.STDOUT)
            try:
                time.sleep(2)  # start-up and the self-test (a 2-part upload of its own)
                idle = vm_hwm_mib(proc.pid)
                for n in range(cores):  # written beside the directory, renamed in when finished
                    make_realistic_core(work / f"core.big.{n}", core_mib * MiB).rename(
                        watch / f"core.big.{n}"
                    )
                for n in range(small):
                    make_realistic_core(work / f"core.small.{n}", 3 * MiB).rename(watch / f"core.small.{n}")
                started = time.monotonic()
                # The self-test's objects count too: wait for an empty directory instead.
                while any(watch.iterdir()):
                    if proc.poll() is not None or time.monotonic() - started > 900:
                        raise RuntimeError(f"daemon stopped or stuck; see {work / 'daemon.log'}")
                    time.sleep(0.2)
                seconds = time.monotonic() - started
                peak = vm_hwm_mib(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
                log.close()
    return {
        "cores": cores,
        "core_mib": core_mib,
        "small_cores": small,
        "seconds": round(seconds, 1),
        "idle_peak_rss_mib": round(idle, 1),
        "peak_rss_mib": round(peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-mib", type=int, default=256)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--small", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(measure(args.core_mib, args.cores, args.small)))


if __name__ == "__main__":
    main()
