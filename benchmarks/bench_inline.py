"""Benchmark: a 1 mm 3D study (176 x 256 x 256, uint16) through the real server, no AI stage.

Reports per-phase times (median of --runs runs) for the study sent as 176 2D slices and as one
3D image, with the ``passthrough`` pipeline (protocol + assembly only) and the default pipeline
(+ the trivial stages). Baseline, run in the same process: a raw loopback TCP echo of the same
number of bytes (the cost of moving the bytes at all). The protocol-and-assembly overhead is
the round trip minus that baseline.

    .venv/bin/python benchmarks/bench_inline.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

import numpy as np

from openrecon_stroke.geometry import Grid, Volume
from openrecon_stroke.mrdfile import MrdStream, make_header_xml, volume_to_images
from openrecon_stroke.server import MrdServer, ServerSettings
from simulator.replay import send_stream, stream_messages

SHAPE = (176, 256, 256)  # slices (sagittal, L-R), rows, columns


def study(as_3d: bool) -> MrdStream:
    nz, ny, nx = SHAPE
    # sagittal: read A->P, phase S->I, slices R->L (LPS)
    grid = Grid(SHAPE, (1.0, 1.0, 1.0), np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], float).T,
                (-88.0, -128.0, 128.0))
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    rng = np.random.default_rng(0)
    head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2) < 1
    data = np.where(head, 600 + 200 * np.cos(6 * x) * np.sin(5 * y), 5) + rng.normal(0, 10, SHAPE)
    vol = Volume(np.clip(data, 0, None).astype(np.float32), grid)
    images = volume_to_images(vol, 1, as_3d=as_3d)
    return MrdStream(header_xml=make_header_xml(protocol_name="t1_mprage_sag", ti_ms=900, matrix=(nx, ny, nz),
                                                fov_mm=(nx, ny, nz)), images=images)


def echo_baseline(nbytes: int) -> float:
    """Seconds to send ``nbytes`` over loopback and get them all back (raw sockets)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def echo():
        c, _ = srv.accept()
        buf = bytearray(1 << 20)
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            c.sendall(memoryview(buf)[:k])
        c.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    payload = bytes(nbytes)
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    got = [0]

    def drain():
        buf = bytearray(1 << 20)
        while got[0] < nbytes:
            k = s.recv_into(buf)
            if not k:
                break
            got[0] += k

    d = threading.Thread(target=drain)
    d.start()
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    d.join()
    dt = time.perf_counter() - t0
    s.close()
    srv.close()
    t.join(5)
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    server = MrdServer(("127.0.0.1", 0), ServerSettings(max_parallel=1))
    server.start_background()
    results = {}
    try:
        for as_3d in (False, True):
            st = study(as_3d)
            for config in ("passthrough", "openrecon-stroke"):
                msgs = list(stream_messages(st, config, {}))
                nbytes = sum(len(m) for m in msgs)
                rows = []
                base = []
                for _ in range(args.runs):
                    res = send_stream("127.0.0.1", server.port, iter(msgs), timeout_s=120)
                    assert res.closed_cleanly, res.error
                    time.sleep(0.05)
                    ph = dict(server.stats[-1])
                    ph["round_trip"] = res.seconds_total
                    rows.append(ph)
                    base.append(echo_baseline(nbytes))
                med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
                b = statistics.median(base)
                key = f"{'3D image' if as_3d else '2D slices'} / {config}"
                med["baseline_raw_echo"] = b
                med["overhead_vs_baseline"] = med["round_trip"] - b
                med["ratio_vs_baseline"] = med["round_trip"] / b
                results[key] = med
                print(f"\n{key}: {nbytes / 2**20:.1f} MiB each way, median of {args.runs} runs")
                for k, v in med.items():
                    unit = "x" if k.startswith("ratio") else "s"
                    print(f"  {k:22s} {v:8.3f} {unit}")
    finally:
        server.shutdown()
        server.server_close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
