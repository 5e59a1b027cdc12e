"""Serve the pipeline flow for one spec on a cron schedule (a long-running process).

    python -m deployments.serve examples/digits/pipeline.yaml --cron "0 2 * * *"

``Flow.serve`` registers a deployment named ``<spec name>-nightly`` with the Prefect API
(``PREFECT_API_URL``, or a local server) and runs its scheduled flow runs in this process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgeport.spec import load_spec
from flows.pipeline import pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="pipeline spec (YAML)")
    parser.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: nightly at 02:00)")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)  # fail now on a bad spec, not at 02:00
    pipeline.serve(
        name=f"{spec.name}-nightly",
        cron=args.cron,
        parameters={"spec_path": str(args.spec.resolve())},
        tags=["edgeport", spec.name],
    )


if __name__ == "__main__":
    main()
