"""Load a training checkpoint into the ``torch.nn.Module`` its factory builds, safely.

Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint that
needs arbitrary code to unpickle is refused rather than executed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import pickle
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import CheckpointError, ModelFactoryError

if TYPE_CHECKING:
    import torch

    from edgeport.spec import ModelSpec

__all__ = ["import_factory", "load_model", "load_state_dict"]


def import_factory(spec: ModelSpec) -> Any:
    """Import ``spec.factory`` ("module:callable"), with ``spec.search_path`` prepended to ``sys.path``.

    Raises:
        ModelFactoryError: the module does not import or has no such attribute.
    """
    module_name, _, attr = spec.factory.partition(":")
    added = [str(p) for p in spec.search_path if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        top = module_name.split(".")[0]
        found = importlib.machinery.PathFinder.find_spec(top, [str(p) for p in spec.search_path])
        loaded = sys.modules.get(top)
        if found is not None and loaded is not None and getattr(loaded, "__file__", None) != found.origin:
            # Another module of the same name (e.g. a second example's `model`) was imported
            # earlier: the spec's own folder wins.
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while the module runs
        raise ModelFactoryError(
            f"model.factory {spec.factory!r}: cannot import module {module_name!r} "
            f"(searched {[str(p) for p in spec.search_path]} then sys.path): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelFactoryError(
                f"model.factory {spec.factory!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelFactoryError(f"model.factory {spec.factory!r} is not callable")
    return obj


def load_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Read the state dict from ``spec.checkpoint`` with ``torch.load(weights_only=True)``.

    Returns:
        Mapping of parameter/buffer name -> tensor.

    Raises:
        CheckpointError: missing file; truncated or corrupt file; a pickle that needs code
            (refused, not executed); ``state_dict_key`` absent; content not a state dict.
    """
    import torch

    path = Path(spec.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch reports both "needs a non-allowlisted global" and "not a pickle at all" as
        # UnpicklingError("Weights only load failed..."); only the former names a global.
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.<>]+)", str(exc))
        if unsafe is None:
            reason = next(
                (ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip() and "WeightsUnpickler" not in ln
                 and not ln.startswith("Check the documentation")),
                type(exc).__name__,
            )
            raise CheckpointError(
                f"model.checkpoint {path}: corrupt or not a torch.save file (UnpicklingError: {reason[:200]})"
            ) from None
        raise CheckpointError(
            f"model.checkpoint {path}: refused: it needs arbitrary code to unpickle ({unsafe.group(1)}), and "
            f"edgeport only loads checkpoints with torch.load(weights_only=True). Save `model.state_dict()` "
            f"(tensors and plain Python types only)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - parsing arbitrary bytes can raise anything (EOFError, IndexError, ...)
        raise CheckpointError(
            f"model.checkpoint {path}: corrupt or truncated checkpoint "
            f"({type(exc).__name__}: {(str(exc).strip().splitlines() or ['(no message)'])[0][:200]})"
        ) from None
    if spec.state_dict_key is not None:
        if not isinstance(obj, dict) or spec.state_dict_key not in obj:
            keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"model.state_dict_key {spec.state_dict_key!r} not found in {path} (top-level keys: {keys})"
            )
        obj = obj[spec.state_dict_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"model.checkpoint {path}: expected a state dict (name -> tensor)"
            + ("" if spec.state_dict_key else "; set model.state_dict_key if it is nested in a dict")
        )
    return obj


def load_model(spec: ModelSpec) -> torch.nn.Module:
    """Build the module with ``factory(**kwargs)``, load the checkpoint strictly, switch to eval mode.

    Raises:
        ModelFactoryError: the factory cannot be imported, fails, or returns no ``nn.Module``.
        CheckpointError: see :func:`load_state_dict`; also state-dict keys or tensor shapes that
            do not match the module (the message lists missing/unexpected keys).
    """
    import torch

    factory = import_factory(spec)
    state = load_state_dict(spec)
    try:
        module = factory(**spec.kwargs)
    except Exception as exc:
        raise ModelFactoryError(f"model.factory {spec.factory!r}(**{spec.kwargs}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelFactoryError(f"model.factory {spec.factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(
            f"model.checkpoint {spec.checkpoint} does not match model.factory {spec.factory!r}: {detail[:800]}"
        ) from None
    return module.eval()
