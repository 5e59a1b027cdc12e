"""Run the MiniLM quantization search (``examples/minilm/search.yaml``) end to end and print its tables.

``edgeport run`` in a child process with its own ``EDGEPORT_HOME`` under ``--work`` (fresh
stores and caches unless ``--resume``), wall time measured around it.

Usage::

    python benchmarks/search_minilm.py --work /tmp/minilm-search           # the full example (goal: < 20 min)
    python benchmarks/search_minilm.py --work /tmp/minilm-search-small --small   # CI-sized sets, fewer trials

``--small`` runs ``prepare.py --small`` into ``--work`` (32 eval / 64 calibration sentences) and a
spec copy with fewer trials, for development.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MINILM = REPO / "examples" / "minilm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--small", action="store_true", help="CI-sized sets and fewer trials")
    parser.add_argument("--resume", action="store_true", help="keep --work's EDGEPORT_HOME (cached trials) instead of starting fresh")
    args = parser.parse_args()
    work = args.work.resolve()
    home = work / "home"
    if not args.resume and home.exists():
        shutil.rmtree(home)
    work.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((MINILM / "search.yaml").read_text())
    spec["model"]["search_path"] = [str(MINILM)]
    if args.small:
        spec_mod = importlib.util.spec_from_file_location("_prepare", MINILM / "prepare.py")
        module = importlib.util.module_from_spec(spec_mod)
        spec_mod.loader.exec_module(module)
        if not (work / "artifacts" / "eval.npz").is_file():
            with contextlib.redirect_stdout(io.StringIO()):
                module.prepare(work / "artifacts", small=True)
        art = work / "artifacts"
        spec["calibration"]["num_samples"] = 32
        spec["search"]["sensitivity"]["num_samples"] = 16
        spec["search"]["max_trials"] = 6
        spec["search"]["space"]["exclude_top_k"] = [0, 2, 6]
        spec["benchmark"]["time_budget_s"] = 1
    else:
        art = MINILM / "artifacts"
    spec["model"]["checkpoint"] = str(art / "minilm.pt")
    spec["calibration"]["dataset"] = str(art / "calibration.npz")
    spec["evaluation"]["dataset"] = str(art / "eval.npz")
    spec_path = work / "search.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "EDGEPORT_HOME": str(home)}
    start = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "edgeport.cli", "run", str(spec_path), "--output", str(work / "out")], env=env, cwd=REPO)
    wall = time.perf_counter() - start
    print(f"\nedgeport run exit code {rc}, wall {wall:.0f} s ({wall / 60:.1f} min)\n")
    if (work / "out" / "summary.json").is_file():
        sys.path.insert(0, str(REPO / "benchmarks"))
        from search_tables import tables

        print(tables(work / "out" / "summary.json"))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
