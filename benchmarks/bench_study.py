"""Benchmark: whole studies through the real MRD server, as a scanner sends them, against the
pipeline of an earlier commit run as the named baseline in the same session.

A study is T1-w then FLAIR, on two connections (the FLAIR connection finds the T1-w's
preprocessing and template registration in the study cache, as on a scanner). Studies:

* ``demo``: the demo phantom (``simulator phantom --seed 0``: 1 mm sagittal T1-w 176x256x256,
  FLAIR 0.9x0.9x4 mm axial);
* ``real``: a real head, ``real_mri/chris_t1`` (188x256x190 at 0.88 mm), T1-w only (no FLAIR of
  that head exists), converted to ISMRMRD by ``simulator convert``.

Each configuration (``ours`` = this working tree, ``baseline`` = ``git archive`` of
``--baseline-rev``, with its own models) runs as its own server process on the same Python
environment: started, networks loaded, one untimed warm-up study, then ``--runs`` timed rounds
(each round empties the study cache first, then sends every study). Reported per study, median
of the rounds:

* stage time per connection and per study (the server log's ``pipeline ... ran in ... (stages
  S s`` line: the pipeline's wall time but for sending series, in which stages that overlap
  count once; for a pipeline that predates that line, the sum of its ``stage ... done in``
  lines), and per stage;
* the connection's wall time (client side: connect to close);
* time from the last image sent to the first derived image received (client side);
* peak memory of the server process (``VmHWM``, over all its rounds).

    .venv/bin/python benchmarks/bench_study.py [--runs 3] [--baseline-rev 48e2e95] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: main before the issue-20 speed-ups (HD-BET on 1.5 mm, whole-grid resampling, series sent at the end)
BASELINE_REV = "48e2e95"
SHARED = Path(os.environ.get("OPENRECON_SHARED_DATA", REPO.parent / "shared" / "data"))
STAGE_RE = re.compile(r"stage (\w+) done in ([0-9.]+) s")
PIPELINE_RE = re.compile(r"pipeline \S+ ran in [0-9.]+ s \(stages ([0-9.]+) s")
CLOSED_RE = re.compile(r"\[conn (\d+)\] closed after ([0-9.]+) s.*phases \(s\): (\{.*\})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_studies(work: Path) -> dict[str, list[Path]]:
    """``{study: [files in sending order]}``, written under ``work``."""
    py = sys.executable
    subprocess.run([py, "-m", "simulator", "phantom", "--out", str(work / "demo"), "--seed", "0"],
                   cwd=REPO, check=True, capture_output=True)
    studies = {"demo": [work / "demo" / "t1.h5", work / "demo" / "flair.h5"]}
    real = SHARED / "real_mri" / "chris_t1.nii.gz"
    if real.is_file():
        out = work / "real_t1.h5"
        subprocess.run([py, "-m", "simulator", "convert", str(real), "--out", str(out)],
                       cwd=REPO, check=True, capture_output=True)
        studies["real"] = [out]
    else:
        print(f"{real} absent: the real-head study is skipped (set OPENRECON_SHARED_DATA)")
    return studies


def baseline_tree(rev: str, dest: Path) -> Path:
    """The repository at ``rev`` (code and models) unpacked under ``dest``."""
    archive = dest / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev], cwd=REPO, stdout=f, check=True)
    root = dest / f"tree_{rev}"
    with tarfile.open(archive) as t:
        t.extractall(root, filter="data")
    archive.unlink()
    return root


class Server:
    """A server process of one configuration, with its log and study cache."""

    def __init__(self, root: Path, work: Path, name: str):
        self.port = free_port()
        self.cache = work / f"cache_{name}"
        self.log_path = work / f"server_{name}.log"
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore"}
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openrecon_stroke", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--cache-dir", str(self.cache)],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        t0 = time.time()
        while "networks loaded" not in self.log_path.read_text():
            if self.proc.poll() is not None or time.time() - t0 > 600:
                raise RuntimeError(f"the {name} server did not start; see {self.log_path}")
            time.sleep(0.2)

    def offset(self) -> int:
        return self.log_path.stat().st_size

    def since(self, offset: int) -> str:
        with self.log_path.open() as f:
            f.seek(offset)
            return f.read()

    def peak_gib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
        return float("nan")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def send(server: Server, path: Path) -> dict:
    """One connection: the file replayed as a scanner would; its figures."""
    from simulator.replay import replay_file

    off = server.offset()
    res = replay_file(path, port=server.port)
    if res.error or not res.closed_cleanly:
        raise RuntimeError(f"replay of {path.name} failed: {res.error}")
    t0 = time.time()
    while not CLOSED_RE.search(text := server.since(off)):  # the server logs the close just after
        if time.time() - t0 > 30:
            raise RuntimeError(f"no 'closed' line for {path.name} in {server.log_path}")
        time.sleep(0.05)
    stages = {m.group(1): float(m.group(2)) for m in STAGE_RE.finditer(text)}
    # the pipeline's own wall time where it logs one (stages that overlap, e.g. lesion and
    # anomaly, would be counted twice by a sum); a pipeline that predates that line: the sum
    whole = PIPELINE_RE.search(text)
    return {
        "stages": stages,
        "stage_s": float(whole.group(1)) if whole else sum(stages.values()),
        "wall_s": res.seconds_total,
        "to_first_derived_s": res.seconds_to_first_derived,
        "images_returned": len(res.images),
    }


def run_config(name: str, root: Path, studies: dict[str, list[Path]], runs: int, work: Path) -> dict:
    print(f"== {name}: starting its server ({root})", flush=True)
    server = Server(root, work, name)
    try:
        for f in studies["demo"]:  # warm-up, untimed
            send(server, f)
        rounds: list[dict] = []
        for r in range(runs):
            shutil.rmtree(server.cache, ignore_errors=True)
            server.cache.mkdir()
            got = {s: [send(server, f) for f in files] for s, files in studies.items()}
            rounds.append(got)
            print(f"   round {r + 1}/{runs}: " + ", ".join(
                f"{s} {sum(c['stage_s'] for c in conns):.1f} s" for s, conns in got.items()), flush=True)
        peak = server.peak_gib()
    finally:
        server.stop()
    out: dict = {"peak_gib": round(peak, 2), "studies": {}}
    for s, files in studies.items():
        conns = []
        for i, f in enumerate(files):
            rows = [rd[s][i] for rd in rounds]
            names = list(rows[0]["stages"])
            conns.append({
                "file": f.name,
                "stage_s": statistics.median(r["stage_s"] for r in rows),
                "wall_s": statistics.median(r["wall_s"] for r in rows),
                "to_first_derived_s": statistics.median(r["to_first_derived_s"] or float("nan") for r in rows),
                "stages": {k: statistics.median(r["stages"].get(k, 0.0) for r in rows) for k in names},
                "runs_stage_s": [round(r["stage_s"], 2) for r in rows],
            })
        study_s = statistics.median(sum(rd[s][i]["stage_s"] for i in range(len(files))) for rd in rounds)
        out["studies"][s] = {"study_stage_s": study_s, "connections": conns}
    return out


def host() -> dict:
    """The machine the figures belong to: they differ between CPU kinds more than between
    commits (denormal floats cost 7x on an Intel Xeon and nothing on an AMD EPYC)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_brain_extraction import sgemm_gflops

    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "?":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_int8")
    return {
        "cpu": model,
        "cpus": len(os.sched_getaffinity(0)),
        "flags": [f for f in wanted if f in flags],
        "sgemm_gflops": round(sgemm_gflops(), 1),
    }


def report(results: dict, base: str, machine: dict | None = None) -> None:
    ours, ref = results["ours"], results.get(base)
    if machine:
        print(f"\nhost: {machine['cpu']}, {machine['cpus']} CPUs, {' '.join(machine['flags']) or 'no AVX2'}, "
              f"numpy SGEMM {machine['sgemm_gflops']:.0f} GFLOP/s")
    for s in ours["studies"]:
        print(f"\n### study `{s}`: median of runs, seconds (baseline = `{base}`)\n")
        print("| connection | stage | ours | baseline | baseline / ours |")
        print("| --- | --- | --- | --- | --- |")
        for i, c in enumerate(ours["studies"][s]["connections"]):
            b = ref["studies"][s]["connections"][i] if ref else None
            for k in list(c["stages"]) + ["stage_s", "to_first_derived_s", "wall_s"]:
                mine = c["stages"].get(k) if k in c["stages"] else c[k]
                theirs = (b["stages"].get(k) if k in c["stages"] else b[k]) if b else None
                label = {"stage_s": "**pipeline (all stages)**", "to_first_derived_s": "last image -> first derived",
                         "wall_s": "connection wall time"}.get(k, k)
                ratio = f"{theirs / mine:.2f}x" if theirs and mine else "-"
                print(f"| {c['file']} | {label} | {mine:.2f} | {theirs if theirs is None else f'{theirs:.2f}'} | {ratio} |")
        mine = ours["studies"][s]["study_stage_s"]
        theirs = ref["studies"][s]["study_stage_s"] if ref else None
        print(f"| **study** | **stage time** | **{mine:.2f}** | {theirs if theirs is None else f'{theirs:.2f}'} | "
              f"{f'{theirs / mine:.2f}x' if theirs else '-'} |")
    print(f"\npeak memory of the server (GiB): ours {ours['peak_gib']:.2f}"
          + (f", baseline {ref['peak_gib']:.2f}" if ref else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline ('' = none)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    machine = host()
    with tempfile.TemporaryDirectory(prefix="bench_study_") as tmp:
        work = Path(tmp)
        studies = make_studies(work)
        configs = {"ours": REPO}
        if args.baseline_rev:
            configs[args.baseline_rev] = baseline_tree(args.baseline_rev, work)
        # interleaving would need both servers resident at once (2x memory): run one after the other
        results = {name: run_config(name, root, studies, args.runs, work) for name, root in configs.items()}
    report(results, args.baseline_rev, machine)
    if args.json:
        args.json.write_text(
            json.dumps({"runs": args.runs, "baseline_rev": args.baseline_rev, "host": machine, **results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
