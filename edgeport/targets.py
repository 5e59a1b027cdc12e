"""Benchmark targets: built-in profiles, target resolution, managed environments.

A *target* (:class:`~edgeport.spec.TargetSpec`) says how and where a variant is
benchmarked: the execution providers (in priority order, each with its options),
the session options, and the Python environment whose ``onnxruntime`` runs
:mod:`edgeport.runner`.

Built-in profiles (:data:`PROFILES`), named by a target's ``profile`` field, or by
its ``name`` when ``profile`` is omitted; fields the spec sets win over the profile::

    cpu            CPUExecutionProvider, ONNX Runtime's default threads (one per physical core)
    cpu-1t         CPUExecutionProvider, 1 intra-op and 1 inter-op thread (a small edge device)
    openvino-cpu   OpenVINOExecutionProvider {device_type: CPU}, then CPUExecutionProvider,
                   in the managed environment "openvino"

Managed environments (:data:`ENVIRONMENTS`) are virtual environments edgeport
creates under ``$EDGEPORT_HOME/envs/<name>`` for execution providers that ship as
their own ONNX Runtime build. ``onnxruntime-openvino`` installs its own
``onnxruntime`` module (with OpenVINO inside), so it cannot share an environment
with the ``onnxruntime`` wheel edgeport itself uses. :func:`setup_environment`
(``edgeport targets setup openvino``) creates one with ``python -m venv`` and
``pip install`` of pinned packages, and records the pins in
``<env>/edgeport-env.json``; a later call reuses the environment while the pins and
the Python ``major.minor`` match, and rebuilds it otherwise. The runner is
self-contained (stdlib, numpy, onnxruntime), so it runs there unchanged.

On demand: :func:`ensure_environment` (called by the pipeline's preflight for every
local target in a managed environment) creates a missing environment with a rich
progress display and logs the time it took, unless ``EDGEPORT_ENV_SETUP=never``
(``edgeport run --no-env-setup``). A missing environment, or a setup that failed,
makes the target *unavailable*: its benchmark entries get ``status: unavailable`` with
the command that sets it up, and the other targets run. The last failed setup is kept
in ``envs/.<name>.setup-error.json`` (removed by a successful one) so that the
benchmark and ``edgeport targets list`` can say why.

Errors are :class:`~edgeport.errors.TargetError` naming the target or environment.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from edgeport.errors import TargetError
from edgeport.home import managed_envs_dir
from edgeport.processes import signal_group
from edgeport.profiles import CURRENT_ENV, ENVIRONMENTS, PROFILES, Profile
from edgeport.spec import TargetSpec

__all__ = [
    "CURRENT_ENV",
    "ENVIRONMENTS",
    "ENV_SETUP_VAR",
    "PROFILES",
    "EnvironmentReadiness",
    "Profile",
    "ResolvedTarget",
    "env_setup_enabled",
    "ensure_environment",
    "environment_dir",
    "environment_fingerprint",
    "environment_python",
    "environment_readiness",
    "environment_status",
    "last_setup_error",
    "resolve_target",
    "runtime_info",
    "setup_command",
    "setup_environment",
    "setup_progress",
    "target_availability",
]

logger = logging.getLogger("edgeport.targets")

#: File inside a managed environment recording its pins; written last, so a folder
#: without it is an unfinished build (removed by the next :func:`setup_environment`).
MARKER_NAME = "edgeport-env.json"

#: Seconds allowed for ``pip install`` of a managed environment (the OpenVINO wheel is ~85 MB).
PIP_TIMEOUT_S = 1800.0

#: Seconds allowed for importing onnxruntime in a managed environment (:func:`runtime_info`).
PROBE_TIMEOUT_S = 120.0

#: Environment variable: what the pipeline's preflight does with a missing managed
#: environment: ``auto`` (default: create it) or ``never`` (the target is recorded
#: ``unavailable``). ``edgeport run --no-env-setup`` sets ``never``.
ENV_SETUP_VAR = "EDGEPORT_ENV_SETUP"


#: Printed by a managed environment's python: its runtime as one JSON line.
_PROBE = (
    "import json, sys, importlib.metadata as m\n"
    "import numpy, onnxruntime as ort\n"
    "def v(d):\n"
    "    try:\n"
    "        return m.version(d)\n"
    "    except m.PackageNotFoundError:\n"
    "        return None\n"
    "print(json.dumps({'python': sys.version.split()[0], 'onnxruntime': ort.__version__,"
    " 'distribution': {d: v(d) for d in ('onnxruntime', 'onnxruntime-openvino', 'numpy')},"
    " 'numpy': numpy.__version__, 'available': ort.get_available_providers(),"
    " 'all': ort.get_all_providers()}))\n"
)


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedTarget:
    """A target with its profile applied and its interpreter chosen.

    Attributes:
        name: the target's name (file names, summary rows).
        profile: the built-in profile applied, or None.
        env: ``"current"`` or a managed environment's name.
        python: the interpreter that runs the runner (``sys.executable`` for "current").
        providers: execution provider names, in priority order.
        provider_options: provider name -> {option: value} (only providers with options).
        intra_op_num_threads, inter_op_num_threads: 0 = ONNX Runtime's default.
        graph_optimization_level: "disable" | "basic" | "extended" | "all".
        execution_mode: "sequential" | "parallel".
    """

    name: str
    profile: str | None
    env: str
    python: Path
    providers: list[str]
    provider_options: dict[str, dict[str, Any]]
    intra_op_num_threads: int
    inter_op_num_threads: int
    graph_optimization_level: str
    execution_mode: str

    def request_providers(self) -> list[str | list[Any]]:
        """Providers as the runner's request takes them: a name, or ``[name, {option: str}]``
        when the provider has options (booleans as "true"/"false", numbers as ``str()``)."""
        out: list[str | list[Any]] = []
        for name in self.providers:
            options = self.provider_options.get(name)
            out.append([name, {k: _option_text(v) for k, v in options.items()}] if options else name)
        return out

    def session_options(self) -> dict[str, Any]:
        """The request's ``session_options`` (``allow_spinning`` is false: fair on a shared host)."""
        return {
            "intra_op_num_threads": self.intra_op_num_threads,
            "inter_op_num_threads": self.inter_op_num_threads,
            "graph_optimization_level": self.graph_optimization_level,
            "execution_mode": self.execution_mode,
            "allow_spinning": False,
        }


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def resolve_target(target: Any, *, check_env: bool = True, home: Path | None = None) -> ResolvedTarget:
    """Apply the target's profile and choose its interpreter.

    Args:
        target: a :class:`~edgeport.spec.TargetSpec` (profile already applied when it
            was validated), a mapping validated as one, or a built-in profile's name.
        check_env: require a managed environment to be set up (its pins recorded and
            its python present); False only computes the interpreter's path.
        home: the state folder; default :func:`~edgeport.home.edgeport_home`.

    Returns:
        The :class:`ResolvedTarget`.

    Raises:
        TargetError: unknown profile or environment, invalid settings, or (with
            ``check_env``) a managed environment that is not set up; the message names
            the target and the command that sets the environment up.
    """
    if isinstance(target, str):
        if target not in PROFILES:
            raise TargetError(f"unknown target profile {target!r}; built-in profiles: {', '.join(PROFILES)}")
        target = TargetSpec(name=target)
    elif isinstance(target, Mapping):
        label = target.get("name", "cpu")
        try:
            target = TargetSpec.model_validate(dict(target))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<target>'}: {e['msg']}" for e in exc.errors())
            raise TargetError(f"target {label!r}: {problems}") from None
    elif not isinstance(target, TargetSpec):
        raise TargetError(f"a target must be a TargetSpec, a mapping or a profile name, got {type(target).__name__}")

    if target.env == CURRENT_ENV:
        python = Path(sys.executable)
    elif target.env in ENVIRONMENTS:
        python = environment_python(target.env, home)
        if check_env:
            problem = _marker_problem(target.env, home)
            if problem:
                raise TargetError(
                    f"target {target.name!r} runs in the managed environment {target.env!r}, which is not ready "
                    f"({problem}); create it with `edgeport targets setup {target.env}`"
                )
    else:
        raise TargetError(
            f"target {target.name!r}: unknown env {target.env!r}; use {CURRENT_ENV!r} or one of {sorted(ENVIRONMENTS)}"
        )
    return ResolvedTarget(
        name=target.name,
        profile=target.profile,
        env=target.env,
        python=python,
        providers=list(target.providers),
        provider_options={k: dict(v) for k, v in target.provider_options.items() if v},
        intra_op_num_threads=target.intra_op_num_threads,
        inter_op_num_threads=target.inter_op_num_threads,
        graph_optimization_level=target.graph_optimization_level,
        execution_mode=target.execution_mode,
    )


def runtime_info(env: str = CURRENT_ENV, *, python: str | Path | None = None, home: Path | None = None) -> dict[str, Any]:
    """The ONNX Runtime an environment provides.

    For ``"current"`` (and no ``python``) this process's onnxruntime is asked; otherwise
    the environment's python runs a probe (about a second; nothing is cached).

    Returns:
        {"python", "onnxruntime" (version), "numpy", "distribution" ({name: version or
        None}), "available" (``get_available_providers()``), "all" (``get_all_providers()``)}.

    Raises:
        TargetError: the interpreter is missing, or cannot import onnxruntime/numpy.
    """
    if env == CURRENT_ENV and python is None:
        import importlib.metadata as md

        import numpy
        import onnxruntime as ort

        def version(dist: str) -> str | None:
            try:
                return md.version(dist)
            except md.PackageNotFoundError:
                return None

        return {
            "python": sys.version.split()[0],
            "onnxruntime": ort.__version__,
            "numpy": numpy.__version__,
            "distribution": {d: version(d) for d in ("onnxruntime", "onnxruntime-openvino", "numpy")},
            "available": ort.get_available_providers(),
            "all": ort.get_all_providers(),
        }
    exe = Path(python) if python is not None else environment_python(env, home)
    if not exe.exists():
        raise TargetError(f"environment {env!r}: interpreter {exe} does not exist; run `edgeport targets setup {env}`")
    try:
        proc = subprocess.run([str(exe), "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TargetError(f"environment {env!r}: cannot run {exe}: {exc}") from exc
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        if proc.returncode != 0 or not lines:
            raise ValueError
        info = json.loads(lines[-1])
        if not isinstance(info, dict) or not isinstance(info.get("available"), list):
            raise ValueError
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise TargetError(f"environment {env!r}: {exe} cannot import onnxruntime (exit {proc.returncode}): {tail}") from None
    return info


def target_availability(target: Any, *, home: Path | None = None) -> tuple[bool, str]:
    """Whether a target can run here with the providers it asks for.

    Args:
        target: as for :func:`resolve_target` (a profile name, a TargetSpec, a mapping).

    Returns:
        ``(available, reason)``: False when the profile is unknown, the managed
        environment is not set up or broken, or a requested provider is unknown to, or
        not available in, the target's onnxruntime (the reason says which); True with
        the runtime that will run it.
    """
    try:
        resolved = resolve_target(target, check_env=True, home=home)
        info = runtime_info(resolved.env, home=home)
    except TargetError as exc:
        return False, str(exc)
    where = "this environment" if resolved.env == CURRENT_ENV else f"env {resolved.env!r}"
    unknown = [p for p in resolved.providers if p not in info["all"]]
    if unknown:
        return False, f"onnxruntime {info['onnxruntime']} in {where} does not know provider(s) {unknown}"
    missing = [p for p in resolved.providers if p not in info["available"]]
    if missing:
        return False, f"{', '.join(missing)} not available in {where} (onnxruntime {info['onnxruntime']} has {info['available']})"
    return True, f"onnxruntime {info['onnxruntime']} in {where}"


# --------------------------------------------------------------------------- managed environments


def _environment(name: str) -> Mapping[str, Any]:
    if name not in ENVIRONMENTS:
        raise TargetError(f"unknown managed environment {name!r}; known: {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[name]


def environment_dir(name: str, home: Path | None = None) -> Path:
    """``$EDGEPORT_ENVS/<name>``, default ``$EDGEPORT_HOME/envs/<name>`` (not created here)."""
    _environment(name)
    return (home / "envs" if home is not None else managed_envs_dir()) / name


def environment_python(name: str, home: Path | None = None) -> Path:
    """The managed environment's interpreter (``bin/python``; ``Scripts/python.exe`` on Windows)."""
    folder = environment_dir(name, home)
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _wanted(name: str) -> dict[str, Any]:
    """What the marker must record for the environment to be reused."""
    env = _environment(name)
    return {
        "packages": list(env["packages"]),
        "constraints": list(env.get("constraints", [])),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def _read_marker(name: str, home: Path | None) -> dict[str, Any] | None:
    try:
        data = json.loads((environment_dir(name, home) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_problem(name: str, home: Path | None) -> str | None:
    """None when the environment exists with the wanted pins, else what is wrong (cheap: no subprocess)."""
    folder = environment_dir(name, home)
    if not folder.is_dir():
        return f"{folder} does not exist"
    marker = _read_marker(name, home)
    if marker is None:
        return f"{folder / MARKER_NAME} is missing or unreadable (an unfinished setup?)"
    wanted = _wanted(name)
    changed = [k for k, v in wanted.items() if marker.get(k) != v]
    if changed:
        return f"it was built with other {'/'.join(changed)} than edgeport pins now ({', '.join(str(marker.get(k)) for k in changed)})"
    if not environment_python(name, home).exists():
        return f"its interpreter {environment_python(name, home)} is missing"
    return None


def environment_status(name: str, home: Path | None = None) -> tuple[bool, str]:
    """Whether a managed environment is set up and works.

    Checks the marker's pins (``<env>/edgeport-env.json``), then runs the environment's
    python to import onnxruntime and checks the providers it ``expects``.

    Returns:
        ``(available, reason)``: the reason names the problem and the command that
        fixes it, or (when available) the runtime's versions and the interpreter.

    Raises:
        TargetError: ``name`` is not a managed environment.
    """
    env = _environment(name)
    problem = _marker_problem(name, home)
    if problem:
        return False, f"not set up: {problem}; run `edgeport targets setup {name}`"
    try:
        info = runtime_info(name, home=home)
    except TargetError as exc:
        return False, f"{exc}; rebuild it with `edgeport targets setup {name} --force`"
    missing = [p for p in env.get("expects", []) if p not in info["available"]]
    if missing:
        return False, f"{', '.join(missing)} not available (onnxruntime {info['onnxruntime']} has {info['available']})"
    return True, f"{_versions_text(info)} at {environment_python(name, home)}"


def _versions_text(info: Mapping[str, Any]) -> str:
    dists = info.get("distribution") or {}
    parts = [f"{d} {v}" for d, v in dists.items() if v]
    return f"python {info.get('python')}, " + ", ".join(parts or [f"onnxruntime {info.get('onnxruntime')}"])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (``flock``) on ``path``: one setup per environment at a time
    (no lock where ``fcntl`` is missing, i.e. Windows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, name: str, timeout: float, log: Any) -> None:
    """Run ``cmd``, passing each line of its output (stdout and stderr) to ``log`` as it comes;
    kill its process group after ``timeout`` seconds."""
    log(f"$ {' '.join(cmd)}")
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    except OSError as exc:
        raise TargetError(f"environment {name!r}: {what} could not start: {exc}") from exc
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        signal_group(proc.pid)

    timer = threading.Timer(timeout, kill)
    timer.start()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    try:
        for line in proc.stdout or ():  # stdout=PIPE: always a stream
            line = line.rstrip()
            if line:
                tail.append(line)
                log(line)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            signal_group(proc.pid)
            proc.wait()
    if expired.is_set():
        raise TargetError(f"environment {name!r}: {what} did not finish within {timeout:g} s")
    if proc.returncode != 0:
        text = "\n".join(tail)[-2000:]
        raise TargetError(f"environment {name!r}: {what} failed (exit {proc.returncode}):\n{text}")


def setup_environment(
    name: str, *, home: Path | None = None, force: bool = False, log: Any = None
) -> Path:
    """Create (or reuse) a managed environment and return its python.

    Reuses ``$EDGEPORT_HOME/envs/<name>`` when its marker records the current pins and
    Python ``major.minor`` and its onnxruntime imports with the expected providers.
    Otherwise the folder is removed and rebuilt: ``<this python> -m venv``, then
    ``<env python> -m pip install -c <constraints> <packages>`` (the package index pip
    is configured with; the OpenVINO wheel is ~85 MB, ~260 MB installed), then the
    runtime is probed and the marker written last. Setups of one environment are
    serialized by a lock file (``envs/.<name>.lock``).

    Args:
        name: a key of :data:`ENVIRONMENTS` (``openvino``).
        home: the state folder; default :func:`~edgeport.home.edgeport_home`.
        force: rebuild even if the environment is reusable.
        log: callable taking one line of progress (default: silent).

    Returns:
        Path of the environment's python.

    Raises:
        TargetError: unknown environment, or venv/pip/probe failed (with pip's output tail).
    """
    log = log or (lambda _line: None)
    env = _environment(name)
    folder = environment_dir(name, home)
    python = environment_python(name, home)
    with _locked(folder.parent / f".{name}.lock"):
        if not force and _marker_problem(name, home) is None:
            ok, reason = environment_status(name, home)
            if ok:
                log(f"reusing {folder}: {reason}")
                return python
            log(f"rebuilding {folder}: {reason}")
        if folder.exists():
            shutil.rmtree(folder)
        t0 = time.perf_counter()
        try:
            _run([sys.executable, "-m", "venv", str(folder)], "python -m venv", name, 300, log)
            cmd = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
            if env.get("constraints"):
                constraints = folder / "edgeport-constraints.txt"
                constraints.write_text("\n".join(env["constraints"]) + "\n")
                cmd += ["-c", str(constraints)]
            _run(cmd + list(env["packages"]), "pip install", name, PIP_TIMEOUT_S, log)
            info = runtime_info(name, home=home)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        missing = [p for p in env.get("expects", []) if p not in info["available"]]
        if missing:
            shutil.rmtree(folder, ignore_errors=True)
            raise TargetError(f"environment {name!r}: built, but {missing} not available (has {info['available']})")
        freeze = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True, text=True
        ).stdout.split()
        marker = {
            **_wanted(name),
            "name": name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "setup_s": round(time.perf_counter() - t0, 1),
            "runtime": info,
            "freeze": freeze,
        }
        (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2))
        _setup_error_path(name, home).unlink(missing_ok=True)
        log(f"created {folder} in {marker['setup_s']:g} s: {_versions_text(info)}")
        return python


# --------------------------------------------------------------------------- on demand


def setup_command(name: str) -> str:
    """The command that creates the managed environment ``name`` (``edgeport targets setup <name>``)."""
    return f"edgeport targets setup {name}"


def env_setup_enabled() -> bool:
    """Whether missing managed environments are created on demand: :data:`ENV_SETUP_VAR`
    (``EDGEPORT_ENV_SETUP``) is ``auto`` (the default when unset) or ``never``.

    Raises:
        TargetError: any other value (the message names the variable and the value).
    """
    value = os.environ.get(ENV_SETUP_VAR, "auto").strip().lower() or "auto"
    if value not in ("auto", "never"):
        raise TargetError(f"{ENV_SETUP_VAR}={value!r}: use 'auto' (create missing environments) or 'never'")
    return value == "auto"


def _setup_error_path(name: str, home: Path | None) -> Path:
    folder = environment_dir(name, home)
    return folder.parent / f".{name}.setup-error.json"


def last_setup_error(name: str, home: Path | None = None) -> dict[str, Any] | None:
    """The last failed on-demand setup of ``name`` (``{"time", "setup_s", "error"}``), or None
    (none recorded, or a setup succeeded since)."""
    try:
        data = json.loads(_setup_error_path(name, home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class EnvironmentReadiness:
    """Whether a managed environment can run benchmarks now, and why not.

    Attributes:
        name: the managed environment (``openvino``).
        available: True when its marker records the current pins (and, from
            :func:`ensure_environment`, its onnxruntime imports with the expected providers).
        reason: the runtime's versions when available; otherwise what is wrong, ending
            with the command that fixes it.
        setup_command: ``edgeport targets setup <name>``.
        created: :func:`ensure_environment` built it in this call.
        setup_s: seconds the setup took (wall clock), or None when none was attempted.
    """

    name: str
    available: bool
    reason: str
    setup_command: str
    created: bool = False
    setup_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def environment_readiness(name: str, home: Path | None = None) -> EnvironmentReadiness:
    """Cheap readiness check (no subprocess): the marker's pins and the interpreter's presence.

    An environment that is not ready names the problem, the last failed setup (if any,
    :func:`last_setup_error`) and the command that sets it up.

    Raises:
        TargetError: ``name`` is not a managed environment.
    """
    command = setup_command(name)
    problem = _marker_problem(name, home)
    if problem is None:
        return EnvironmentReadiness(name, True, f"managed environment {name!r} at {environment_dir(name, home)}", command)
    reason = f"managed environment {name!r} is not set up ({problem})"
    failed = last_setup_error(name, home)
    if failed:
        reason += f"; the setup at {failed.get('time')} failed: {str(failed.get('error'))[-600:]}"
    return EnvironmentReadiness(name, False, f"{reason}; set it up with `{command}`", command)


def environment_fingerprint(name: str, home: Path | None = None) -> str | None:
    """What identifies a built environment (its marker's pins and creation time), for cache
    keys; None when it is not ready."""
    if _marker_problem(name, home) is not None:
        return None
    marker = _read_marker(name, home) or {}
    return json.dumps({k: marker.get(k) for k in ("packages", "constraints", "python", "created")}, sort_keys=True)


@contextlib.contextmanager
def setup_progress(name: str, console: Console) -> Iterator[Callable[[str], None]]:
    """A rich progress line (spinner, elapsed time, the setup's latest output line) while a
    managed environment is built; yields the ``log`` callable for :func:`setup_environment`."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn(f"[bold]setting up managed environment {escape(name)!s}[/]"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    )
    with progress:
        task_id = progress.add_task("", total=None)
        yield lambda line: progress.update(task_id, description=escape(line.strip()[-100:]))


def ensure_environment(
    name: str, *, setup: bool | None = None, home: Path | None = None, console: Any = None
) -> EnvironmentReadiness:
    """Make sure the managed environment ``name`` exists, creating it when missing.

    An environment whose marker records the current pins is probed (its onnxruntime must
    import and offer the providers it ``expects``). One that is missing, stale or broken
    is built by :func:`setup_environment` (pinned packages; a rich progress display on
    stderr; the time it took is logged and returned) when ``setup`` allows it. A failed
    setup is not raised: it is returned as not available (and recorded for
    :func:`environment_readiness`), so the caller can mark the target ``unavailable``
    and carry on.

    Args:
        name: a key of :data:`ENVIRONMENTS`.
        setup: create a missing environment; default :func:`env_setup_enabled`
            (``EDGEPORT_ENV_SETUP``, ``auto`` unless ``never``).
        home: the state folder; default :func:`~edgeport.home.edgeport_home`.
        console: rich Console for the progress display (default: a new one on stderr).

    Returns:
        The :class:`EnvironmentReadiness` (``setup_s`` set when a setup was attempted).

    Raises:
        TargetError: ``name`` is not a managed environment, or ``EDGEPORT_ENV_SETUP`` has
            an invalid value.
    """
    _environment(name)
    command = setup_command(name)
    if setup is None:
        setup = env_setup_enabled()
    ready = environment_readiness(name, home)
    if ready.available:
        ok, reason = environment_status(name, home)
        if ok:
            return EnvironmentReadiness(name, True, reason, command)
        ready = EnvironmentReadiness(name, False, reason, command)
    if not setup:
        return EnvironmentReadiness(
            name, False, f"{ready.reason} (not created here: {ENV_SETUP_VAR}=never / --no-env-setup)", command
        )
    logger.info("managed environment %r is not ready: creating it in %s", name, environment_dir(name, home))
    if console is None:
        console = Console(stderr=True)
    t0 = time.perf_counter()
    try:
        with setup_progress(name, console) as log:
            setup_environment(name, home=home, log=log)
    except TargetError as exc:
        elapsed = round(time.perf_counter() - t0, 1)
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "setup_s": elapsed, "error": str(exc)}
        path = _setup_error_path(name, home)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
        logger.warning("managed environment %r: setup failed after %.1f s: %s", name, elapsed, exc)
        console.print(f"[red]managed environment {name!r}: setup failed after {elapsed:g} s[/] (details in the summary)", highlight=False)
        reason = f"managed environment {name!r}: setup failed after {elapsed:g} s: {str(exc)[-600:]}; retry with `{command}`"
        return EnvironmentReadiness(name, False, reason, command, setup_s=elapsed)
    elapsed = round(time.perf_counter() - t0, 1)
    ok, reason = environment_status(name, home)
    logger.info("managed environment %r created in %.1f s: %s", name, elapsed, reason)
    console.print(f"[green]managed environment {name!r} created in {elapsed:g} s[/]: {escape(reason)}", highlight=False)
    return EnvironmentReadiness(name, ok, reason, command, created=True, setup_s=elapsed)
