"""Two pipeline runs registering versions of the same registered model at the same moment.

One digits pipeline run provides real variant records (ONNX models, validation, evaluation,
benchmarks); two threads, lined up by a barrier, then call ``register_pipeline`` with them,
against a sqlite store (which locks under concurrent writers) and against a PostgreSQL backend
store (a cluster of Debian's ``postgresql`` package created in a tmp dir and started on a free
loopback port by the fixture). Both registrations must succeed with distinct versions, the
alias must name a version of one of them, and no run may be left RUNNING/FAILED or orphaned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from edgeport.registry import REGISTRATION_TAG, check_tracking_uri
from edgeport.servers import free_port
from edgeport.spec import load_spec
from mlflow import MlflowClient
from tasks.register import register_pipeline
from tests.conftest import digits_spec_dict, write_spec

pytestmark = pytest.mark.slow

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _pg_bin() -> Path | None:
    if (PG_BIN / "initdb").is_file():
        return PG_BIN
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_uri():
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, database ``mlflow``; stopped at teardown.

    PostgreSQL refuses to run as root: the cluster belongs to the ``postgres`` OS user (created
    by the Debian package) and its commands run through ``runuser``. Missing PostgreSQL fails
    under CI (``CI=true``; ``.ci/run`` installs it) and skips locally.
    """
    bindir = _pg_bin()
    if bindir is None or shutil.which("runuser") is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="edgeport-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    port = free_port()

    def as_postgres(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd], cwd=root, capture_output=True, text=True, check=check, timeout=120
        )

    as_postgres("mkdir", str(sockets))
    as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=50"
    started = False
    try:
        as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        started = True
        as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def digits_run(prefect_harness, digits_artifacts, tmp_path_factory):
    """One digits pipeline run (sqlite store of its own): its spec and variant records."""
    root = tmp_path_factory.mktemp("concurrent")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEPORT_HOME", str(root / "home"))
    from flows.pipeline import pipeline

    data = digits_spec_dict(digits_artifacts)
    data["registry"]["tracking_uri"] = f"sqlite:///{root / 'pipeline.db'}"
    data["registry"]["registered_model"] = "digits-concurrent"
    spec_path = write_spec(root / "spec", data)
    summary = pipeline(str(spec_path), output_dir=str(root / "out"))
    variants = [{**v, "model_version": None} for v in summary["variants"]]
    assert sum(v["passed"] for v in variants) >= 2
    yield {"spec_path": spec_path, "spec": load_spec(spec_path), "variants": variants, "root": root}
    mp.undo()


def _register_concurrently(run: dict, uri: str, tmp_path: Path) -> list[dict]:
    check_tracking_uri(uri)  # the store's tables exist before the race (as in the flow's start-up check)
    barrier = threading.Barrier(2)
    results: list[dict | None] = [None, None]
    errors: list[BaseException | None] = [None, None]

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = register_pipeline(run["spec"], run["spec_path"], run["variants"], uri, tmp_path / f"out{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    assert errors == [None, None], errors
    return results  # type: ignore[return-value]


def _assert_consistent(uri: str, run: dict, results: list[dict]) -> None:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = run["spec"].registry.registered_model
    passing = [v["name"] for v in run["variants"] if v["passed"]]
    mine = [set(r["versions"].values()) for r in results]
    assert all(len(m) == len(passing) for m in mine)
    assert not mine[0] & mine[1]  # distinct version numbers
    registered = {str(mv.version): mv for mv in client.search_model_versions(f"name = '{model}'")}
    assert set(registered) == mine[0] | mine[1]  # both runs' versions exist, nothing else
    for r in results:
        for name, version in r["versions"].items():
            mv = registered[version]
            assert mv.tags["variant"] == name and mv.tags[REGISTRATION_TAG] == r["registration_id"]
            assert client.get_run(mv.run_id).info.status == "FINISHED"
    challenger = str(client.get_model_version_by_alias(model, "challenger").version)
    assert challenger in {r["challenger"]["version"] for r in results}  # one run's challenger, last writer wins
    assert registered[challenger].tags["variant"] == next(r for r in results if r["challenger"]["version"] == challenger)["challenger"]["variant"]
    # no orphan runs: two parents, each with one nested run per variant, all FINISHED
    experiment = client.get_experiment_by_name(run["spec"].registry.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert parents == {r["mlflow_run_id"] for r in results}
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in nested)
    assert len(nested) == 2 * len(run["variants"])


def test_concurrent_registration_on_sqlite(digits_run, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = _register_concurrently(digits_run, uri, tmp_path)
    _assert_consistent(uri, digits_run, results)


def test_concurrent_registration_on_postgresql(digits_run, postgres_uri, tmp_path):
    results = _register_concurrently(digits_run, postgres_uri, tmp_path)
    _assert_consistent(postgres_uri, digits_run, results)
