"""Capture the README's screenshots of the Prefect and MLflow UIs with headless Chromium.

Starts ``edgeport servers up`` on free loopback ports in a fresh EDGEPORT_HOME, trains the digits
example if its artifacts are missing, runs ``edgeport run examples/digits/pipeline.yaml`` against
the servers, promotes the challenger (``edgeport promote``), then saves:

- ``prefect-flow-run-artifacts.png``: the Prefect UI flow-run page of the pipeline run, Artifacts tab;
- ``mlflow-registered-model.png``: the MLflow UI page of the registered model (versions, aliases).

The servers are stopped at the end (and the temporary EDGEPORT_HOME removed unless ``--keep-home``).
Needs Debian's Chromium (``apt-get install -y chromium``); no Playwright browser download.

    .venv/bin/python docs/screenshots/capture.py [--out docs/screenshots] [--chromium /usr/bin/chromium]
    .venv/bin/python docs/screenshots/capture.py --home DIR --skip-run   # pictures only, on DIR's servers' stores
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "examples" / "digits" / "pipeline.yaml"


class Chromium:
    """Headless Chromium driven over the DevTools protocol (``websockets``, a Prefect dependency):
    the UIs are single-page apps, so a screenshot waits for the page's content and may click a
    tab or close a panel first."""

    def __init__(self, executable: str, width: int = 1600, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="edgeport-chromium-")
        self.proc = subprocess.Popen(
            [
                executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("headless Chromium did not open its DevTools port")
            time.sleep(0.2)
        port = active.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {expression!r} on {self.evaluate('location.href')}")
            time.sleep(0.5)

    def screenshot(
        self, url: str, out: Path, ready: str, actions: str | None = None, settle_s: float = 3.0, size: tuple[int, int] = (1600, 900)
    ) -> None:
        """Open ``url`` in a viewport of ``size`` (width, height px), wait until the JS expression
        ``ready`` is truthy, run ``actions`` (JS), let the page settle, and save the viewport as PNG."""
        self.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        self.wait_for(ready)
        if actions:
            self.evaluate(actions)
        time.sleep(settle_s)
        png = self.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(png))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def latest_flow_run_id(api_url: str, flow_name: str) -> str:
    """Id of the newest flow run of ``flow_name`` on the Prefect server at ``api_url``."""
    body = {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC", "limit": 1}
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.loads(response.read())
    if not runs:
        raise RuntimeError(f"no flow run of {flow_name} on {api_url}")
    return runs[0]["id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary EDGEPORT_HOME")
    parser.add_argument("--home", type=Path, help="use this EDGEPORT_HOME (kept) instead of a temporary one")
    parser.add_argument("--skip-run", action="store_true", help="with --home: reuse its runs, only take the pictures")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from edgeport.home import managed_envs_dir

    # The example's targets include openvino-cpu: keep using the machine's managed environments.
    os.environ["EDGEPORT_ENVS"] = str(managed_envs_dir())
    if args.skip_run and not args.home:
        parser.error("--skip-run needs --home")
    home = args.home.resolve() if args.home else Path(tempfile.mkdtemp(prefix="edgeport-screenshots-"))
    keep = args.keep_home or args.home is not None
    os.environ["EDGEPORT_HOME"] = str(home)
    for key in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        os.environ.pop(key, None)  # edgeport must find the servers by itself
    from edgeport.servers import free_port, servers_down, servers_up

    bin_dir = Path(sys.executable).parent
    edgeport = str(bin_dir / "edgeport")
    state = servers_up(mlflow_port=free_port(), prefect_port=free_port(), timeout_s=180)
    try:
        print(f"servers: MLflow {state.mlflow_url}, Prefect {state.prefect_ui_url} (home {home})", flush=True)
        if not args.skip_run:
            subprocess.run([sys.executable, str(REPO / "examples" / "digits" / "train.py"), "--if-missing"], check=True)
            subprocess.run([edgeport, "run", str(SPEC)], check=True, cwd=REPO)
            promote = [edgeport, "promote", "digits-cnn", "--alias", "challenger", "--spec", str(SPEC)]
            print(f"edgeport promote: exit {subprocess.run(promote, cwd=REPO).returncode}", flush=True)

        args.out.mkdir(parents=True, exist_ok=True)
        run_id = latest_flow_run_id(state.prefect_api_url, "edgeport-pipeline")
        prefect_png = args.out / "prefect-flow-run-artifacts.png"
        mlflow_png = args.out / "mlflow-registered-model.png"
        browser = Chromium(args.chromium)
        try:
            # Prefect: the flow run page, Artifacts tab (clicked once the run has loaded).
            browser.screenshot(
                f"{state.prefect_ui_url}/runs/flow-run/{run_id}",
                prefect_png,
                ready="!!document.querySelector('li#artifacts')",
                actions="document.querySelector('li#artifacts').click();"
                "setTimeout(() => document.querySelector('li#artifacts').scrollIntoView(), 1500)",
                settle_s=5,
            )
            # MLflow: the registered model's page (versions, tags, aliases), assistant panel closed.
            browser.screenshot(
                f"{state.mlflow_url}/#/models/digits-cnn",
                mlflow_png,
                ready="document.body.innerText.includes('Version 1')",
                actions="document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()",
                size=(1600, 1700),  # the three versions (aliases on version 1, the oldest) without scrolling
            )
        finally:
            browser.close()
        print(f"wrote {prefect_png} and {mlflow_png}")
    finally:
        servers_down()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
