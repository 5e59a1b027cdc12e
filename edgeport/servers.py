"""Local MLflow tracking server + Prefect server, started and stopped by edgeport.

``edgeport servers up`` runs both on loopback, each in its own process group, with all their
state under ``$EDGEPORT_HOME/servers/``::

    $EDGEPORT_HOME/servers/
      state.json               ServersState of the running pair (URLs, PIDs, home)
      mlflow.pid, prefect.pid  the PID (= process-group id) of each server
      mlflow/mlflow.db         MLflow backend store (sqlite; runs + model registry)
      mlflow/artifacts/        MLflow artifact destination (served by the server: --serve-artifacts)
      prefect/                 PREFECT_HOME of the Prefect server (its sqlite database)
      logs/mlflow.log, logs/prefect.log

Other edgeport commands find the running servers through :func:`running_servers`
(``edgeport.registry.resolve_tracking_uri`` and ``edgeport.runtime_env.configure_runtime_env``); a shell
gets them with ``eval "$(edgeport servers env)"``.

Timeouts: MLflow's first answer takes ~20 s on 2 cores (imports + sqlite schema migrations),
Prefect's ~10-15 s; :func:`servers_up` waits up to ``timeout_s`` (default 120 s) for both.
Telemetry is off in both servers (``DO_NOT_TRACK``, ``PREFECT_SERVER_ANALYTICS_ENABLED``,
``MLFLOW_ENABLE_TELEMETRY``). MLflow's GenAI job runner (huey consumers, which edgeport does not
use) is off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set.

Linux/macOS only: processes are tracked through process groups and ``/proc`` (Linux) for the
leftover check.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from edgeport.errors import (
    PortInUseError,
    ServerError,
    ServersNotRunning,
    ServerStartError,
)
from edgeport.home import edgeport_home
from edgeport.processes import signal_group

__all__ = [
    "ServersState",
    "servers_dir",
    "mlflow_server_command",
    "prefect_server_command",
    "start_mlflow_server",
    "start_prefect_server",
    "RunPrefectServer",
    "wait_healthy",
    "stop_process_group",
    "servers_up",
    "servers_down",
    "servers_status",
    "running_servers",
    "servers_env",
    "free_port",
    "port_in_use",
    "process_alive",
    "process_tree",
]

#: Telemetry switches passed to both servers (and honoured by the clients edgeport runs).
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
}


class ServersState(BaseModel):
    """The running server pair, as written to ``$EDGEPORT_HOME/servers/state.json``.

    Attributes:
        mlflow_url: MLflow tracking URI, e.g. ``http://127.0.0.1:5000``.
        prefect_api_url: Prefect API URL, ending with ``/api``, e.g. ``http://127.0.0.1:4200/api``.
        mlflow_pid: PID of the ``mlflow server`` process (also its process-group id).
        prefect_pid: PID of the ``prefect server start`` process (also its process-group id).
        home: the ``EDGEPORT_HOME`` the servers keep their state in (absolute path).
    """

    mlflow_url: str
    prefect_api_url: str
    mlflow_pid: int
    prefect_pid: int
    home: str

    @property
    def prefect_ui_url(self) -> str:
        """The Prefect UI: the API URL without ``/api``."""
        return self.prefect_api_url.removesuffix("/api")


# --------------------------------------------------------------------------- paths


def servers_dir() -> Path:
    """``$EDGEPORT_HOME/servers`` (absolute; not created here)."""
    return edgeport_home() / "servers"


def _state_path() -> Path:
    return servers_dir() / "state.json"


def _logs_dir() -> Path:
    return servers_dir() / "logs"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (bind to port 0, read the port, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound (someone listens there).

    Binds with ``SO_REUSEADDR`` like uvicorn does, so a port whose old connections linger in
    TIME_WAIT counts as free (the servers can bind it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, ppid, pgrp) of ``pid`` from ``/proc/<pid>/stat``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (tests start servers in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def process_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (an exited child of ours is reaped here)."""
    if pid <= 0:
        return False
    _reap(pid)
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs(pid: int, word: str) -> bool:
    """True when ``pid`` is alive and its command line mentions ``word`` (guards against a
    recorded PID that the OS has since given to an unrelated process)."""
    if not process_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc: trust the PID
    return word in cmdline


def process_tree(pid: int) -> set[int]:
    """``pid``, every live process in its process group, and all their descendants (by parent
    PID, which also catches children that started a new session), from ``/proc`` (Linux).

    Returns an empty set when ``/proc`` is missing or ``pid`` is gone.
    """
    if not Path("/proc").is_dir():
        return {pid} if process_alive(pid) else set()
    stats: dict[int, tuple[str, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                stats[int(entry.name)] = stat
    tree = {p for p, (_, _, pgrp) in stats.items() if pgrp == pid}
    if pid in stats:
        tree.add(pid)
    changed = True
    while changed:
        children = {p for p, (_, ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        changed = bool(children)
    return tree


def stop_process_group(pid: int, timeout_s: float = 30.0) -> None:
    """Stop the server whose leader is ``pid``: SIGTERM to its process group (and to any
    descendant outside it), wait up to ``timeout_s`` seconds, then SIGKILL what is left.

    Returns when none of the processes is alive. Raises :class:`ServerError` when a process
    survives SIGKILL for 5 s more.
    """
    victims = process_tree(pid)
    if not victims:
        return

    def signal_all(sig: int) -> None:
        for p in {pid, *victims}:  # the group, and any descendant that left it (or leads its own)
            signal_group(p, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        victims = {p for p in victims if process_alive(p)} | process_tree(pid)
        if not victims:
            return
        time.sleep(0.2)
    signal_all(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        victims = {p for p in victims if process_alive(p)}
        if not victims:
            return
        time.sleep(0.1)
    raise ServerError(f"processes {sorted(victims)} of server group {pid} survived SIGKILL")


# --------------------------------------------------------------------------- command lines


def mlflow_server_command(
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    workers: int = 1,
    allowed_hosts: str | None = None,
    default_artifact_root: str | None = None,
) -> list[str]:
    """The ``mlflow server`` command line edgeport runs (argv list, ``python -m mlflow server ...``).

    Args:
        backend_store_uri: SQLAlchemy URI of the runs + registry store
            (``sqlite:///<abs path>`` locally, ``postgresql://...`` in production).
        artifacts_destination: where the server stores the artifacts it serves
            (a local folder, ``s3://bucket/prefix``); clients upload/download through the server
            (``--serve-artifacts``, artifact root ``mlflow-artifacts:/``), so they need no bucket
            credentials.
        host: interface to bind (``127.0.0.1``: loopback only).
        port: TCP port.
        workers: uvicorn worker processes; 1 for a sqlite store (one writer at a time).
        allowed_hosts: ``--allowed-hosts`` value (Host headers accepted besides localhost and
            private IPs, MLflow's DNS-rebinding protection); None leaves MLflow's default.
        default_artifact_root: ``--default-artifact-root`` for new experiments; None (the
            servers' default) gives them the proxied root ``mlflow-artifacts:/``.
            ``mlflow/server.sh`` sets it to browse the embedded store, whose experiments keep
            local artifact paths that edgeport also writes to directly.

    ``mlflow/compose.yaml`` runs the same flags (checked by ``tests/test_servers.py``).
    """
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination", artifacts_destination,
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    if default_artifact_root:
        cmd += ["--default-artifact-root", default_artifact_root]
    return cmd


def prefect_server_command(host: str = "127.0.0.1", port: int = 4200, services: bool = True, ui: bool = True) -> list[str]:
    """The ``prefect server start`` command line edgeport runs (foreground, analytics off); without
    ``services`` (scheduler, late runs, ...: ``--no-services``) and ``ui`` (``--no-ui``) it is the API
    alone, as a single run needs it (:class:`RunPrefectServer`)."""
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port), "--analytics-off"]
    return cmd + ([] if services else ["--no-services"]) + ([] if ui else ["--no-ui"])


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in TELEMETRY_OFF.items():
        env.setdefault(key, value)
    env.update(extra)
    return env


def _popen(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd),
            start_new_session=True,  # own session + process group: stopped as a group, survives the CLI
        )


def _check_port(name: str, host: str, port: int) -> None:
    if port_in_use(host, port):
        raise PortInUseError(
            f"cannot start the {name} server: port {port} on {host} is already in use "
            f"(pick another with --{name.lower()}-port, or stop what listens there)"
        )


def start_mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str | Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    log_path: str | Path | None = None,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``mlflow server`` (see :func:`mlflow_server_command`) in its own process group.

    Does not wait for it: call :func:`wait_healthy` on ``http://host:port/health``, and stop it
    with :func:`stop_process_group` (``proc.pid``). A local ``artifacts_destination`` folder is
    created. stdout+stderr are appended to ``log_path`` (default
    ``$EDGEPORT_HOME/servers/logs/mlflow.log``).

    Raises:
        PortInUseError: ``host:port`` is taken.
    """
    _check_port("MLflow", host, port)
    destination = str(artifacts_destination)
    if "://" not in destination:
        Path(destination).mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path else _logs_dir() / "mlflow.log"
    extra = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    extra.update(env or {})
    cmd = mlflow_server_command(backend_store_uri, destination, host, port, workers=workers)
    return _popen(cmd, _child_env(extra), log, cwd=log.parent)


def start_prefect_server(
    prefect_home: str | Path,
    host: str = "127.0.0.1",
    port: int = 4200,
    log_path: str | Path | None = None,
    services: bool = True,
    ui: bool = True,
) -> subprocess.Popen:
    """Start ``prefect server start`` with ``PREFECT_HOME=prefect_home`` in its own process group
    (``services``, ``ui``: see :func:`prefect_server_command`).

    Its database is Prefect's default (sqlite under ``prefect_home``) unless
    ``PREFECT_API_DATABASE_CONNECTION_URL`` is set. Does not wait: call :func:`wait_healthy` on
    ``http://host:port/api/health``.

    Raises:
        PortInUseError: ``host:port`` is taken.
    """
    _check_port("Prefect", host, port)
    prefect_home = Path(prefect_home)
    prefect_home.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path else _logs_dir() / "prefect.log"
    api_url = f"http://{_url_host(host)}:{port}/api"
    extra = {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": api_url,  # the server's own clients (services) talk to itself
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": api_url,
    }
    return _popen(prefect_server_command(host, port, services=services, ui=ui), _child_env(extra), log, cwd=prefect_home)


class RunPrefectServer:
    """The Prefect API server of one command (``edgeport run``), when no Prefect server is configured.

    What Prefect's own ephemeral mode does (a temporary server for the process), started by edgeport
    so that it can start *early*: the server boots in its own process while the command imports
    its flows (3-5 s of CPU), and the command's process never imports Prefect's server code (Prefect's
    ``SubprocessASGIServer`` needs ``prefect.server.api.server`` imported in the client, another 2-4 s).
    It is ``prefect server start --no-services --no-ui`` on a free loopback port, with the
    ``PREFECT_HOME`` database (the one Prefect's ephemeral server would use), in its own session: a
    terminal's Ctrl-C or a SIGTERM to the command's process group does not reach it, so the flow
    can still report its final state; :meth:`stop` (registered with ``atexit`` at start, so it runs
    after Prefect's log and event workers, registered later, drained to it) ends it.

    Use :meth:`start` before Prefect is imported (it sets ``PREFECT_API_URL`` for this process),
    :meth:`wait` before the first Prefect API call.
    """

    def __init__(self, proc: subprocess.Popen, api_url: str, log_path: Path) -> None:
        self.proc, self.api_url, self.log_path = proc, api_url, log_path

    @classmethod
    def start(cls, prefect_home: str | Path) -> RunPrefectServer:
        """Spawn the server and point this process at it (``PREFECT_API_URL``); does not wait.

        Args:
            prefect_home: its ``PREFECT_HOME`` (sqlite database and settings).

        Raises:
            ServerError: Prefect is already imported in this process (it would not read
                ``PREFECT_API_URL`` any more), or ``PREFECT_API_URL`` is set.
        """
        if "prefect" in sys.modules or os.environ.get("PREFECT_API_URL"):
            raise ServerError("a per-run Prefect server is started before Prefect is imported, with no PREFECT_API_URL set")
        port = free_port()
        log = _logs_dir() / "prefect-run.log"
        proc = start_prefect_server(prefect_home, port=port, log_path=log, services=False, ui=False)
        server = cls(proc, f"http://127.0.0.1:{port}/api", log)
        os.environ["PREFECT_API_URL"] = server.api_url
        atexit.register(server.stop)
        return server

    def wait(self, timeout_s: float = 120.0) -> None:
        """Block until the server answers ``/api/health``.

        Raises:
            ServerStartError: it exited or did not answer within ``timeout_s`` s (the message has
                the tail of its log, ``$EDGEPORT_HOME/servers/logs/prefect-run.log``).
        """
        wait_healthy(f"{self.api_url}/health", timeout_s, proc=self.proc, log_path=self.log_path, interval_s=0.1)

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 5 s); idempotent."""
        if self.proc.poll() is None:
            stop_process_group(self.proc.pid, timeout_s=5.0)
        self.proc.wait()


def _log_tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not Path(log_path).is_file():
        return ""
    text = Path(log_path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_healthy(
    url: str,
    timeout_s: float = 120.0,
    *,
    proc: subprocess.Popen | None = None,
    log_path: str | Path | None = None,
    interval_s: float = 0.5,
) -> str:
    """Poll ``url`` with GET until it answers HTTP 200; return the body (text).

    Pass the health endpoint: ``http://host:port/health`` for MLflow (body ``OK``),
    ``http://host:port/api/health`` for Prefect (body ``true``). Each request has a 2 s timeout.

    Args:
        url: the URL to poll.
        timeout_s: give up after this many seconds.
        proc: the server process; when it exits first, fail at once instead of waiting.
        log_path: the server's log, whose tail goes into the error message.
        interval_s: pause between attempts (s).

    Raises:
        ServerStartError: ``proc`` exited, or no HTTP 200 within ``timeout_s``; the message has
            the last answer/error and the log tail.
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                body = response.read().decode(errors="replace")
                if response.status == 200:
                    return body
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if proc is not None and proc.poll() is not None:
            tail = _log_tail(Path(log_path) if log_path else None)
            raise ServerStartError(
                f"the server behind {url} exited with code {proc.returncode} during start-up"
                + (f"; last lines of {log_path}:\n{tail}" if tail else "")
            )
        if time.monotonic() >= deadline:
            tail = _log_tail(Path(log_path) if log_path else None)
            raise ServerStartError(
                f"{url} did not answer HTTP 200 within {timeout_s:.0f} s (last: {last})"
                + (f"; last lines of {log_path}:\n{tail}" if tail else "")
            )
        time.sleep(interval_s)


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- state


def _read_state() -> ServersState | None:
    path = _state_path()
    if not path.is_file():
        return None
    try:
        return ServersState.model_validate_json(path.read_text())
    except ValueError:
        return None


def running_servers() -> ServersState | None:
    """The servers of this ``EDGEPORT_HOME`` when its state file exists and both PIDs are alive;
    else None. Cheap (no HTTP request): safe to call on every command."""
    state = _read_state()
    if state is None:
        return None
    if _runs(state.mlflow_pid, "mlflow") and _runs(state.prefect_pid, "prefect"):
        return state
    return None


def servers_env() -> dict[str, str]:
    """``{"PREFECT_API_URL": ..., "MLFLOW_TRACKING_URI": ...}`` of the running servers.

    Raises:
        ServersNotRunning: no servers are running for this ``EDGEPORT_HOME``.
    """
    state = running_servers()
    if state is None:
        raise ServersNotRunning(f"no edgeport servers are running for EDGEPORT_HOME={edgeport_home()}; start them with `edgeport servers up`")
    return {"PREFECT_API_URL": state.prefect_api_url, "MLFLOW_TRACKING_URI": state.mlflow_url}


def servers_status() -> dict:
    """Health of each server of this ``EDGEPORT_HOME``.

    Returns:
        ``{"home": str, "running": bool, "mlflow": {...}, "prefect": {...}}`` where each server's
        dict has ``url``, ``pid``, ``alive`` (process runs) and ``healthy`` (health endpoint
        answered HTTP 200 within 2 s); ``running`` is True when both are alive and healthy.
        Without a state file the server dicts are None.
    """
    state = _read_state()
    result: dict = {"home": str(edgeport_home()), "running": False, "mlflow": None, "prefect": None}
    if state is None:
        return result
    for name, url, health, pid in (
        ("mlflow", state.mlflow_url, f"{state.mlflow_url}/health", state.mlflow_pid),
        ("prefect", state.prefect_api_url, f"{state.prefect_api_url}/health", state.prefect_pid),
    ):
        alive = _runs(pid, name)
        result[name] = {"url": url, "pid": pid, "alive": alive, "healthy": alive and _healthy(health)}
    result["running"] = all(result[n]["alive"] and result[n]["healthy"] for n in ("mlflow", "prefect"))
    return result


def _remove_state() -> None:
    folder = servers_dir()
    for name in ("state.json", "mlflow.pid", "prefect.pid"):
        (folder / name).unlink(missing_ok=True)


def servers_up(
    host: str = "127.0.0.1",
    mlflow_port: int = 5000,
    prefect_port: int = 4200,
    timeout_s: float = 120.0,
) -> ServersState:
    """Start the MLflow and Prefect servers of this ``EDGEPORT_HOME``, wait until both answer
    their health endpoints, and write ``$EDGEPORT_HOME/servers/state.json``.

    Idempotent: when the servers are already running (state file + live PIDs + healthy), returns
    their state and starts nothing, whatever the ports asked. A stale state (a PID gone) is
    cleaned up first (the surviving server is stopped).

    Args:
        host: interface both bind (default loopback only; no authentication, keep it local).
        mlflow_port, prefect_port: TCP ports (defaults 5000 and 4200, the tools' own).
        timeout_s: seconds to wait for both health checks (MLflow needs ~20 s here).

    Raises:
        PortInUseError: a port is taken (nothing is started).
        ServerStartError: a server exited during start-up or stayed unhealthy past ``timeout_s``
            (the message has its log tail); both servers are stopped again.
    """
    existing = _read_state()
    if existing is not None:
        status = servers_status()
        if status["running"]:
            return existing
        if _runs(existing.mlflow_pid, "mlflow") and _runs(existing.prefect_pid, "prefect"):
            # Both alive but not healthy yet (another `up` is still starting them): wait.
            wait_healthy(f"{existing.mlflow_url}/health", timeout_s)
            wait_healthy(f"{existing.prefect_api_url}/health", timeout_s)
            return existing
        servers_down()
    if mlflow_port == prefect_port:
        raise PortInUseError(f"the MLflow and Prefect servers need two different ports (both are {mlflow_port})")
    _check_port("MLflow", host, mlflow_port)
    _check_port("Prefect", host, prefect_port)

    folder = servers_dir()
    store = folder / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    logs = _logs_dir()
    mlflow_log, prefect_log = logs / "mlflow.log", logs / "prefect.log"
    mlflow_proc = start_mlflow_server(
        f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", host, mlflow_port, mlflow_log
    )
    try:
        prefect_proc = start_prefect_server(folder / "prefect", host, prefect_port, prefect_log)
    except BaseException:
        stop_process_group(mlflow_proc.pid)
        raise
    state = ServersState(
        mlflow_url=f"http://{_url_host(host)}:{mlflow_port}",
        prefect_api_url=f"http://{_url_host(host)}:{prefect_port}/api",
        mlflow_pid=mlflow_proc.pid,
        prefect_pid=prefect_proc.pid,
        home=str(edgeport_home()),
    )
    # Written before the wait so that `servers down` from another shell can stop a slow start.
    (folder / "mlflow.pid").write_text(f"{mlflow_proc.pid}\n")
    (folder / "prefect.pid").write_text(f"{prefect_proc.pid}\n")
    _state_path().write_text(state.model_dump_json(indent=2) + "\n")
    try:
        deadline = time.monotonic() + timeout_s
        wait_healthy(f"{state.mlflow_url}/health", timeout_s, proc=mlflow_proc, log_path=mlflow_log)
        wait_healthy(
            f"{state.prefect_api_url}/health",
            max(1.0, deadline - time.monotonic()),
            proc=prefect_proc,
            log_path=prefect_log,
        )
    except BaseException:
        servers_down()
        raise
    return state


def servers_down(timeout_s: float = 30.0) -> None:
    """Stop the servers of this ``EDGEPORT_HOME`` by their recorded PIDs (whole process groups
    and descendants: SIGTERM, then SIGKILL after ``timeout_s`` seconds) and remove the state and
    PID files. Stores, artifacts and logs stay. A no-op when nothing is recorded.

    Raises:
        ServerError: a process survived SIGKILL.
    """
    folder = servers_dir()
    pids: set[tuple[int, str]] = set()
    state = _read_state()
    if state is not None:
        pids |= {(state.mlflow_pid, "mlflow"), (state.prefect_pid, "prefect")}
    for name in ("mlflow", "prefect"):
        path = folder / f"{name}.pid"
        if path.is_file():
            try:
                pids.add((int(path.read_text().strip()), name))
            except ValueError:
                pass
    for pid, name in sorted(pids):
        if _runs(pid, name):
            stop_process_group(pid, timeout_s)
        _reap(pid)
    _remove_state()


def load_state_file(path: str | Path) -> ServersState:
    """Parse a ``state.json`` (for tools that read another home's state)."""
    return ServersState.model_validate(json.loads(Path(path).read_text()))
