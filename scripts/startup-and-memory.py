#!/usr/bin/env python3
"""Measures how long `cara serve` takes from exec to answering /health, and its resident
memory when idle, over several runs.

    cargo build --release -p cara
    python3 scripts/startup-and-memory.py target/release/cara 10

("first" runs start on an empty data directory and create it; "warm" runs reuse it.)
Uses only loopback; the provider is configured but never contacted.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def health(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return b'"ok"' in s.recv(4096)
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    exe, runs = sys.argv[1], int(sys.argv[2])
    results = {"start_ms first": [], "start_ms warm": [], "idle_rss_kb first": [], "idle_rss_kb warm": []}
    base = tempfile.mkdtemp(prefix="cara-measure-")
    try:
        for i in range(runs):
            data = os.path.join(base, f"data{i}")
            for kind in ("first", "warm"):
                port = free_port()
                env = {"PATH": os.environ.get("PATH", ""), "HOME": base, "CARAPACE_LOG": "warn",
                       "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "CARAPACE_MODEL": "m"}
                t0 = time.perf_counter()
                p = subprocess.Popen([exe, "--data-dir", data, "serve", "--bind", f"127.0.0.1:{port}"],
                                     env=env, stderr=subprocess.DEVNULL)
                deadline = t0 + 10
                while not health(port):
                    if time.perf_counter() > deadline:
                        p.kill()
                        sys.exit("cara did not answer /health within 10 s")
                    time.sleep(0.0005)
                results[f"start_ms {kind}"].append((time.perf_counter() - t0) * 1000)
                time.sleep(1.0)
                with open(f"/proc/{p.pid}/status") as f:
                    rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
                results[f"idle_rss_kb {kind}"].append(rss)
                p.terminate()
                p.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for name, values in results.items():
        values.sort()
        print(f"{name}: median {values[len(values) // 2]:.1f}  min {values[0]:.1f}  max {values[-1]:.1f}  (n = {len(values)})")


if __name__ == "__main__":
    main()
