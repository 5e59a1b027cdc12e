"""Benchmark: where the time of a warm re-run of the digits example goes (issue 13).

Each mode gets a fresh ``EDGEPORT_HOME``: a first run fills its caches, then ``--reruns`` re-runs
with unchanged inputs into the same output folder, the modes interleaved (one re-run of each in
turn): Prefect's embedded temporary server (the default); with ``--baseline DIR`` the same from
another checkout (an A/B of two commits); with ``--with-servers`` a running ``edgeport servers up``.
Each re-run's wall time is split, from the timestamps of its own output, into:

* ``start-up``: process start to the flow run's ``Beginning flow run`` log line (Python, imports, the pre-start
  checks and, with the embedded server, its start: the two overlap, see docs/benchmarks.md);
* ``flow``: ``summary.json`` ``timings_s.total`` (the flow body);
* ``rest``: the flow's own start/finish bookkeeping, the embedded server's stop and the exit.

Prints a markdown table with the CPU (model and INT8 ISA features) for docs/benchmarks.md::

    python examples/digits/train.py --if-missing
    python benchmarks/warm_rerun.py --reruns 3 [--with-servers] [--baseline DIR] [--out warm.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "digits" / "pipeline.yaml"
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \|")


def _cli(*args: str, env: dict[str, str], repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m edgeport.cli ARGS`` with the code of checkout ``repo``."""
    env = {**env, "PYTHONPATH": str(repo)}
    return subprocess.run(
        [sys.executable, "-m", "edgeport.cli", *args], env=env, cwd=repo, capture_output=True, text=True, check=False
    )


def _first_stamp(text: str, day: datetime, marker: str) -> float | None:
    """Epoch seconds of the first ``HH:MM:SS.mmm |`` log line of ``text`` (Prefect's log format) containing ``marker``."""
    for line in text.splitlines():
        m = _STAMP.match(line)
        if m and marker in line:
            h, mi, s, ms = (int(g) for g in m.groups())
            return day.replace(hour=h, minute=mi, second=s, microsecond=ms * 1000).timestamp()
    return None


def run_once(env: dict[str, str], out: Path, repo: Path = REPO) -> dict[str, float]:
    """One ``edgeport run`` of the digits spec; returns wall / CPU seconds and the split.

    Raises:
        SystemExit: the run failed (exit code other than 0 or 2).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    day = datetime.now()
    start = time.time()
    proc = _cli("run", str(repo / SPEC.relative_to(REPO)), "--output", str(out), env=env, repo=repo)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 2):
        sys.exit(f"edgeport run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    flow = float(summary["timings_s"]["total"])
    first = _first_stamp(proc.stdout + "\n" + proc.stderr, day, "Beginning flow run")
    startup = (first - start) if first is not None else float("nan")
    return {
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "startup": startup,
        "flow": flow,
        "rest": wall - startup - flow,
        "versions_reused": sum(1 for v in summary["variants"] if v.get("reused")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reruns", type=int, default=3, help="Re-runs per mode (default 3).")
    parser.add_argument("--with-servers", action="store_true", help="Interleave re-runs with `edgeport servers up` running.")
    parser.add_argument(
        "--baseline", type=Path,
        help="Another checkout (e.g. `git worktree add /tmp/base <commit>`): its embedded re-runs interleave with this one's.",
    )
    parser.add_argument("--out", type=Path, help="Also write the markdown report here.")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from edgeport.home import managed_envs_dir
    from edgeport.runner import cpu_info

    load_before = os.getloadavg()[0]
    envs = os.environ.get("EDGEPORT_ENVS", str(managed_envs_dir()))
    root = Path(tempfile.mkdtemp(prefix="edgeport-warm-"))

    def home_env(label: str, embedded: bool) -> dict[str, str]:
        """A fresh ``EDGEPORT_HOME`` per mode; ``PREFECT_HOME`` set = a running ``servers up`` is not used."""
        home = root / label
        env = {**os.environ, "EDGEPORT_HOME": str(home), "EDGEPORT_ENVS": envs}
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_HOME", None)
        if embedded:
            env["PREFECT_HOME"] = str(home / "prefect")
        return env

    # mode -> (environment, checkout); each re-runs into the one output folder of its first run
    modes: dict[str, tuple[dict[str, str], Path]] = {"embedded Prefect server": (home_env("embedded", True), REPO)}
    if args.baseline:
        modes[f"embedded, baseline {args.baseline.name}"] = (home_env("baseline", True), args.baseline.resolve())
    if args.with_servers:
        servers_env = home_env("servers", False)
        up = _cli("servers", "up", env=servers_env)
        if up.returncode != 0:
            sys.exit(f"edgeport servers up failed:\n{up.stderr[-2000:]}")
        modes["`edgeport servers up` running"] = (servers_env, REPO)
    firsts: dict[str, dict[str, float]] = {}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        for mode, (env, repo) in modes.items():
            firsts[mode] = run_once(env, Path(env["EDGEPORT_HOME"]) / "out", repo)
        for _ in range(args.reruns):  # interleaved: mode 1, mode 2, ..., mode 1, ...
            for mode, (env, repo) in modes.items():
                results[mode].append(run_once(env, Path(env["EDGEPORT_HOME"]) / "out", repo))
    finally:
        if args.with_servers:
            _cli("servers", "down", env=servers_env)

    cpu = cpu_info()
    lines = [
        f"CPU: {cpu['model']} ({os.cpu_count()} cores; {', '.join(cpu['isa']) or 'no INT8 ISA flags read'}); "
        f"load average (1 min) before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}.",
        "",
        "| re-run mode | first run: wall s / CPU s | re-runs | wall s (median, min-max) | CPU s | start-up s | flow s | rest s | versions reused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, rows in results.items():
        def med(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        walls = [r["wall"] for r in rows]
        lines.append(
            f"| {mode} | {firsts[mode]['wall']:.1f} / {firsts[mode]['cpu']:.1f} | {len(rows)} | {med('wall'):.1f} ({min(walls):.1f}-{max(walls):.1f}) | {med('cpu'):.1f} | "
            f"{med('startup'):.1f} | {med('flow'):.1f} | {med('rest'):.1f} | {int(med('versions_reused'))} |"
        )
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
