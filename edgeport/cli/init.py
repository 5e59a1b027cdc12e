"""``edgeport init SOURCE``: write a commented pipeline spec for a model (the logic: :mod:`edgeport.init`).

    edgeport init model.onnx --data samples.npz -o pipeline.yaml
    edgeport init runs/best.ckpt --factory model:Net --strip-prefix model. --data val.npz
    edgeport init ./my-hf-model --task sentence-embedding
    edgeport run pipeline.yaml

Mounted by the main CLI with :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from edgeport.cli.common import console, fail
from edgeport.errors import EdgeportError
from edgeport.init import write_spec

__all__ = ["init", "register"]


def init(
    source: Annotated[Path, typer.Argument(help="Checkpoint (.pt/.ckpt/.safetensors, needs --factory), Hugging Face folder, .pt2 or .onnx.")],
    data: Annotated[Optional[Path], typer.Option("--data", help=".npz: one array per input (+ labels or embeddings): calibration and evaluation.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Spec file to write.")] = Path("pipeline.yaml"),
    factory: Annotated[Optional[str], typer.Option("--factory", help="module:callable building the nn.Module (checkpoints).")] = None,
    search_path: Annotated[Optional[Path], typer.Option("--search-path", help="Folder of the factory's module (default: the working directory).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Hugging Face task (default: guessed from the folder).")] = None,
    state_dict_key: Annotated[Optional[str], typer.Option("--state-dict-key", help="Key of the state dict in the checkpoint.")] = None,
    strip_prefix: Annotated[Optional[str], typer.Option("--strip-prefix", help='Prefix removed from state-dict keys, e.g. "model.".')] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Pipeline and registered model name.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the output file.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Inspect SOURCE and write a commented pipeline spec that `edgeport run` runs as written."""
    try:
        result = write_spec(
            source, output, data=data, factory=factory, task=task, name=name, state_dict_key=state_dict_key,
            strip_prefix=strip_prefix, search_path=search_path, force=force,
        )
    except EdgeportError as exc:
        fail(exc, debug)
    console.print(f"wrote {escape(str(result.path))} ({result.source} source)")
    for i in result.inputs:
        console.print(f"  input  {escape(i['name'])}: {i['dtype']} {escape(str(i['shape']))}")
    console.print(f"  outputs {escape(str(result.outputs))}")
    for note in result.notes:
        console.print(f"  note: {escape(note)}")
    console.print(f"next: edgeport run {escape(str(result.path))}")


def register(app: typer.Typer) -> None:
    """Mount ``edgeport init`` on the main CLI."""
    app.command("init")(init)
