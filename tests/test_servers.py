"""``edgeport servers``: real MLflow + Prefect servers on free loopback ports, started once per
module under their own EDGEPORT_HOME; the production compose file's configuration."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeport.cli import app
from edgeport.errors import (
    PortInUseError,
    ServerError,
    ServersNotRunning,
    ServerStartError,
)
from edgeport.servers import (
    RunPrefectServer,
    ServersState,
    free_port,
    mlflow_server_command,
    port_in_use,
    process_tree,
    running_servers,
    servers_down,
    servers_env,
    servers_status,
    servers_up,
    start_mlflow_server,
    stop_process_group,
    wait_healthy,
)

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _alive(pid: int) -> bool:
    """Independent of edgeport.servers: /proc/<pid>/stat exists and the process is no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return raw[raw.rindex(")") + 2] not in "ZX"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    """Both servers, once for the module, in their own EDGEPORT_HOME; stopped at the end."""
    home = tmp_path_factory.mktemp("servers-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPORT_HOME", str(home))
        state = servers_up(mlflow_port=free_port(), prefect_port=free_port(), timeout_s=180)
        trees = process_tree(state.mlflow_pid) | process_tree(state.prefect_pid)
        try:
            yield home, state, trees
        finally:
            servers_down()
    assert not [p for p in trees if _alive(p)]


@pytest.fixture
def in_servers_home(servers, monkeypatch: pytest.MonkeyPatch) -> ServersState:
    """The module's servers, with EDGEPORT_HOME pointing at their home for this test."""
    home, state, _ = servers
    monkeypatch.setenv("EDGEPORT_HOME", str(home))
    return state


@pytest.mark.slow
def test_up_status_env_and_discovery(in_servers_home: ServersState, monkeypatch: pytest.MonkeyPatch):
    state = in_servers_home
    assert state.mlflow_url.startswith("http://127.0.0.1:")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", state.prefect_api_url)
    saved = json.loads((Path(state.home) / "servers" / "state.json").read_text())
    assert saved["mlflow_pid"] == state.mlflow_pid and saved["prefect_pid"] == state.prefect_pid

    status = servers_status()
    assert status["running"] is True
    assert status["mlflow"]["healthy"] and status["prefect"]["healthy"]
    assert running_servers() == state

    assert servers_env() == {"PREFECT_API_URL": state.prefect_api_url, "MLFLOW_TRACKING_URI": state.mlflow_url}
    result = runner.invoke(app, ["servers", "env"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"export PREFECT_API_URL={state.prefect_api_url}",
        f"export MLFLOW_TRACKING_URI={state.mlflow_url}",
    ]
    result = runner.invoke(app, ["servers", "status", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["running"] is True

    # Discovery: no flag, no spec URI, no MLFLOW_TRACKING_URI -> the running server; env and spec win.
    from edgeport.registry import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, None) == state.mlflow_url
    assert resolve_tracking_uri("sqlite:///spec.db", None) == "sqlite:///spec.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert resolve_tracking_uri(None, None) == "http://elsewhere:5000"

    # configure_runtime_env points Prefect at the running server unless the user chose one.
    from edgeport.runtime_env import configure_runtime_env

    for name in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                 "PREFECT_LOGGING_EXTRA_LOGGERS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    configure_runtime_env()
    assert os.environ["PREFECT_API_URL"] == state.prefect_api_url
    assert "PREFECT_HOME" not in os.environ
    monkeypatch.setenv("PREFECT_API_URL", "http://user-choice:4200/api")
    configure_runtime_env()
    assert os.environ["PREFECT_API_URL"] == "http://user-choice:4200/api"


@pytest.mark.slow
def test_mlflow_through_server_with_served_artifacts(in_servers_home: ServersState, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    state = in_servers_home
    client = MlflowClient(tracking_uri=state.mlflow_url, registry_uri=state.mlflow_url)
    experiment_id = client.create_experiment("servers-test")
    run = client.create_run(experiment_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: --serve-artifacts
    client.log_metric(run.info.run_id, "p50_ms", 1.25)
    notes = tmp_path / "notes.txt"
    notes.write_text("served through the tracking server\n")
    client.log_artifact(run.info.run_id, str(notes))
    client.set_terminated(run.info.run_id)

    again = MlflowClient(tracking_uri=state.mlflow_url).get_run(run.info.run_id)
    assert again.data.metrics["p50_ms"] == 1.25
    downloaded = client.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == "served through the tracking server\n"
    # The server wrote it to its artifacts destination under EDGEPORT_HOME/servers.
    stored = list((Path(state.home) / "servers" / "mlflow" / "artifacts").rglob("notes.txt"))
    assert len(stored) == 1 and run.info.run_id in str(stored[0])
    client.create_registered_model("servers-test-model")
    assert client.get_registered_model("servers-test-model").name == "servers-test-model"


@pytest.mark.slow
def test_flow_run_reaches_prefect_server(in_servers_home: ServersState, tmp_path: Path):
    """A flow run in another process, configured only by `servers env`, is recorded by the server."""
    state = in_servers_home
    script = tmp_path / "hello_flow.py"
    script.write_text(textwrap.dedent("""
        from prefect import flow

        @flow(name="edgeport-servers-test")
        def hello() -> int:
            return 42

        print(hello())
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(servers_env())
    env["PREFECT_HOME"] = str(tmp_path / "client-prefect-home")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    request = urllib.request.Request(
        f"{state.prefect_api_url}/flow_runs/filter",
        data=json.dumps({"flows": {"name": {"any_": ["edgeport-servers-test"]}}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.loads(response.read())
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"]


@pytest.mark.slow
def test_up_is_idempotent(in_servers_home: ServersState):
    state = in_servers_home
    again = servers_up(mlflow_port=free_port(), prefect_port=free_port())
    assert again == state
    result = runner.invoke(app, ["servers", "up"])
    assert result.exit_code == 0, result.output
    assert "already running" in result.output and state.mlflow_url in result.output


def test_port_in_use_starts_nothing(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            servers_up(mlflow_port=free_port(), prefect_port=port)
        result = runner.invoke(app, ["servers", "up", "--mlflow-port", str(port), "--prefect-port", str(free_port())])
    assert result.exit_code == 1
    assert "PortInUseError" in result.output and str(port) in result.output
    assert running_servers() is None
    assert not (Path(os.environ["EDGEPORT_HOME"]) / "servers" / "state.json").exists()
    with pytest.raises(ServersNotRunning):
        servers_env()
    assert runner.invoke(app, ["servers", "env"]).exit_code == 1


@pytest.mark.slow
def test_start_failure_reports_log_tail(tmp_path: Path):
    """A server that dies at start-up fails at once with its log tail (not after the timeout)."""
    log = tmp_path / "mlflow.log"
    proc = start_mlflow_server("bogus-scheme://nowhere", tmp_path / "artifacts", "127.0.0.1", free_port(), log)
    try:
        with pytest.raises(ServerStartError, match=r"exited with code [1-9](.|\n)*bogus-scheme") as info:
            wait_healthy(f"http://127.0.0.1:{free_port()}/health", 120, proc=proc, log_path=log)
        assert str(log) in str(info.value)
    finally:
        stop_process_group(proc.pid, timeout_s=5)
        proc.wait(timeout=10)


def test_stale_state_is_not_running(tmp_path: Path):
    """A state file whose PIDs are gone, or belong to some other program, means 'not running'."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        folder = Path(os.environ["EDGEPORT_HOME"]) / "servers"
        folder.mkdir(parents=True)
        state = ServersState(mlflow_url="http://127.0.0.1:1", prefect_api_url="http://127.0.0.1:2/api",
                             mlflow_pid=other.pid, prefect_pid=other.pid, home=str(folder.parent))  # fmt: skip
        (folder / "state.json").write_text(state.model_dump_json())
        assert running_servers() is None
        assert servers_status()["running"] is False
        servers_down()  # must not kill the unrelated `sleep`
        assert _alive(other.pid)
        assert not (folder / "state.json").exists()
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
def test_down_leaves_no_process_and_frees_ports(servers, in_servers_home: ServersState):
    """Last test of the module: `servers down` stops every process of both servers."""
    _, state, trees = servers
    assert state.mlflow_pid in trees and state.prefect_pid in trees
    assert len(process_tree(state.mlflow_pid)) >= 2  # mlflow -> uvicorn worker: the group matters
    ports = [int(state.mlflow_url.rsplit(":", 1)[1]), int(state.prefect_api_url.rsplit(":", 1)[1].split("/")[0])]
    result = runner.invoke(app, ["servers", "down"])
    assert result.exit_code == 0, result.output
    assert [p for p in trees if _alive(p)] == []
    assert not any(port_in_use("127.0.0.1", port) for port in ports)
    assert running_servers() is None
    assert not (Path(state.home) / "servers" / "state.json").exists()
    assert runner.invoke(app, ["servers", "status"]).exit_code == 1
    assert (Path(state.home) / "servers" / "mlflow" / "mlflow.db").is_file()  # the stores stay


# --------------------------------------------------------------------------- production set-up (mlflow/)


def _flag_names(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}

MLFLOW_DIR = REPO / "mlflow"
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-[^}]*)?\}")  # ${VAR}, not the $${VAR} escape


def _env_example() -> dict[str, str]:
    values = {}
    for line in (MLFLOW_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def test_compose_file_is_complete():
    """The production compose file parses and has the services, health checks and start order."""
    text = (MLFLOW_DIR / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "mlflow"}
    for name in ("postgres", "minio", "mlflow"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 3
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
        "create-bucket": {"condition": "service_completed_successfully"},
    }
    assert services["create-bucket"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert "mc mb --ignore-existing" in " ".join(services["create-bucket"]["entrypoint"])
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert "psycopg2-binary==" in services["mlflow"]["build"]["dockerfile_inline"]
    # Published ports on the host's loopback only.
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port

    # Every ${VAR} the file uses is defined (non-empty) in .env.example, and nothing there is unused.
    used = set(_VAR.findall(text))
    defined = _env_example()
    assert used - set(defined) == set(), f"undefined in .env.example: {sorted(used - set(defined))}"
    assert set(defined) - used == set(), f"unused in compose.yaml: {sorted(set(defined) - used)}"
    assert all(defined.values())


def test_compose_mlflow_command_matches_servers():
    """The compose MLflow command line uses the flags edgeport.servers builds (+ --allowed-hosts)."""
    compose = yaml.safe_load((MLFLOW_DIR / "compose.yaml").read_text())
    command = [str(a) for a in compose["services"]["mlflow"]["command"]]
    assert command[:2] == ["mlflow", "server"]
    local = mlflow_server_command("sqlite:///x.db", "/tmp/artifacts", "127.0.0.1", 5000, allowed_hosts="localhost")
    assert local[1:4] == ["-m", "mlflow", "server"]
    assert _flag_names(command) == _flag_names(local)
    values = dict(zip(command, command[1:]))
    assert values["--backend-store-uri"].startswith("postgresql://")
    assert values["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in command
    # mlflow/server.sh takes its command line from the same builder.
    assert "mlflow_server_command" in (MLFLOW_DIR / "server.sh").read_text()
    assert not (MLFLOW_DIR / "__init__.py").exists()  # would shadow the real mlflow package


@pytest.mark.slow
def test_run_prefect_server_starts_before_prefect_in_its_own_session_and_stops_at_exit(tmp_path: Path):
    """``RunPrefectServer`` in a fresh interpreter (Prefect not imported yet): it points the process
    at itself, answers once waited for, leads its own session (a Ctrl-C to the command's process group
    cannot reach it), and is gone after the interpreter exits (its atexit hook)."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from edgeport.servers import RunPrefectServer
        server = RunPrefectServer.start(sys.argv[1])
        server.wait()
        import prefect  # imported after: the client reads the run server's URL
        from prefect.settings import PREFECT_API_URL
        print(json.dumps({"pid": server.proc.pid, "sid": os.getsid(server.proc.pid), "own_sid": os.getsid(0),
                          "url": server.api_url, "env": os.environ["PREFECT_API_URL"], "setting": PREFECT_API_URL.value()}))
        """
    )
    env = {**os.environ, "EDGEPORT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "prefect")], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["url"].startswith("http://127.0.0.1:") and info["url"].endswith("/api")
    assert info["env"] == info["setting"] == info["url"]
    assert info["sid"] == info["pid"] != info["own_sid"]  # a session (and process group) of its own
    assert not _alive(info["pid"])  # stopped when the interpreter exited
    assert (tmp_path / "prefect" / "prefect.db").is_file()  # the PREFECT_HOME database it was given


def test_run_prefect_server_refuses_to_start_once_prefect_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import prefect  # noqa: F401 - the point: Prefect would no longer read PREFECT_API_URL

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ServerError, match="before Prefect is imported"):
        RunPrefectServer.start(tmp_path)
    assert "PREFECT_API_URL" not in os.environ
