"""``edgeport.cli.interrupts``: an interrupt is never lost where Python drops exceptions (issue 14).

A signal's Python handler runs wherever the main thread is; an exception raised in a weakref
callback or ``__del__`` is dropped ("Exception ignored in ...", CPython issue #95959). During
imports that is importlib's module-lock callback, and a Ctrl-C landing there once let a digits run
finish with exit 0. Each script below runs a body under :func:`interruptible` in a fresh
interpreter (real signals, the command's real handlers) and must exit 130 with the one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import typer

from edgeport.cli.interrupts import EXIT_SIGINT, interruptible
from tests.conftest import REPO

PROLOGUE = """
import signal, sys, time, typer, weakref
from edgeport.cli.interrupts import interruptible

def interrupted_body():
{body}

try:
    with interruptible("the demo", "run it again", prefect_server=False):
        interrupted_body()
        time.sleep(5)  # the interrupt must have ended the body by now
        print("not interrupted")
except typer.Exit as exc:
    sys.exit(exc.exit_code)
"""


def run_script(body: str) -> subprocess.CompletedProcess:
    script = PROLOGUE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def assert_interrupted(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_SIGINT, output
    assert "not interrupted" not in output, output
    assert [line for line in output.splitlines() if line.startswith("interrupted (SIGINT): the demo stopped")], output
    assert "Exception ignored" not in output and "Traceback" not in output, output


def test_ctrl_c_inside_a_weakref_callback_is_not_lost():
    # the handler runs right after raise_signal returns: inside the callback, where Python drops
    # what is raised (without the command's unraisable hook: "Exception ignored in", exit 0)
    assert_interrupted(run_script("""
        class Resource:
            pass

        def on_collect(ref):
            signal.raise_signal(signal.SIGINT)

        resource = Resource()
        ref = weakref.ref(resource, on_collect)
        del resource
    """))


def test_ctrl_c_inside_a_finalizer_is_not_lost():
    assert_interrupted(run_script("""
        class Resource:
            def __del__(self):
                signal.raise_signal(signal.SIGINT)

        Resource()
    """))


def test_ctrl_c_in_the_import_machinery_is_raised_after_it():
    # the handler is called with a frame of importlib's own code (here the finder loop of a real
    # import): it must not raise there (a lost exception, or the import lock left held) but soon after
    result = run_script("""
        class Finder:
            def find_spec(self, name, path=None, target=None):
                if name == "edgeport_no_such_module":
                    frame = sys._getframe(1)
                    assert frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"), frame
                    signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)  # returns: delivered again later
                    print("handler returned in importlib", flush=True)
                return None

        sys.meta_path.insert(0, Finder())
        try:
            import edgeport_no_such_module  # noqa: F401
        except ModuleNotFoundError:
            pass
    """)
    assert "handler returned in importlib" in result.stdout, result.stdout + result.stderr
    assert_interrupted(result)


def test_the_signal_handlers_are_restored_after_the_command():
    check = """
import signal, sys
from edgeport.cli.interrupts import interruptible
before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook)
with interruptible("the demo", "run it again", prefect_server=False):
    assert signal.getsignal(signal.SIGINT) is not before[0] and sys.unraisablehook is not before[2]
assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sys.unraisablehook) == before
signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup: an ignored Ctrl-C stays ignored
with interruptible("the demo", "run it again", prefect_server=False):
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
print("restored")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "restored", result.stdout + result.stderr


def outcome_off_the_main_thread(body) -> BaseException | None:
    """What ``interruptible`` raises around ``body`` in a thread of its own (off the main thread it
    neither touches signal handlers nor ends the interpreter: the test run goes on)."""
    outcome: list[BaseException | None] = []

    def command() -> None:
        try:
            with interruptible("the demo", "run it again", prefect_server=False):
                body()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=command)
    thread.start()
    thread.join(30)
    assert len(outcome) == 1, "the body did not finish"
    return outcome[0]


def test_an_exception_an_interrupt_turned_into_another_is_the_interrupt():
    # Python 3.11 wraps an exception raised in __set_name__ in a RuntimeError; a Ctrl-C during an
    # import (pydantic models) once ended a run with "Error: RuntimeError: Error calling __set_name__"
    class Descriptor:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    outcome = outcome_off_the_main_thread(lambda: type("Model", (), {"field": Descriptor()}))
    assert isinstance(outcome, typer.Exit) and outcome.exit_code == EXIT_SIGINT, repr(outcome)


def test_an_exit_raised_from_none_after_an_interrupt_is_not_one():
    # the chain a traceback shows: `raise typer.Exit(1) from None` while handling a Ctrl-C is that exit
    def body() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise typer.Exit(1) from None

    outcome = outcome_off_the_main_thread(body)
    assert isinstance(outcome, typer.Exit) and outcome.exit_code == 1, repr(outcome)


def test_other_exceptions_pass_through():
    def body() -> None:
        raise ValueError("bad")

    outcome = outcome_off_the_main_thread(body)
    assert isinstance(outcome, ValueError), repr(outcome)


def test_ctrl_c_while_the_command_line_imports_is_one_line_and_exit_130():
    # the signal arrives while edgeport.cli imports typer (the first ~0.5-1 s of every command):
    # a meta-path finder raises it at that import, deterministically
    script = textwrap.dedent("""
        import os, signal, sys

        class CtrlCAtTyper:
            def find_spec(self, name, path=None, target=None):
                if name == "typer":
                    sys.meta_path.remove(self)
                    signal.raise_signal(signal.SIGINT)
                return None

        sys.meta_path.insert(0, CtrlCAtTyper())
        import edgeport.cli
        print("not interrupted")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_SIGINT, output
    assert "not interrupted" not in output and "Traceback" not in output, output
    assert "interrupted (SIGINT): edgeport stopped while starting, before any command ran" in output


def test_the_command_line_leaves_pythons_sigint_handler_once_imported():
    script = "import signal, edgeport.cli; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "True", result.stdout + result.stderr
