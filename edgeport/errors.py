"""The exception hierarchy of edgeport.

Every error edgeport raises on purpose derives from :class:`EdgeportError`, so a
caller (the CLI, a Prefect flow, a user's script) can catch the whole family in
one ``except``. Subclasses that describe bad input also inherit the builtin they
resemble (the pattern of ``prefect.exceptions``), so ``except ValueError`` keeps
working for callers that do not know edgeport.

    EdgeportError
    ├── SpecError (ValueError)             the pipeline spec is invalid
    ├── CheckpointError (ValueError)       checkpoint missing, corrupt, unsafe, or not matching the factory
    ├── ModelFactoryError (ImportError)    ``model.factory`` cannot be imported or called
    ├── DataError (ValueError)             calibration / evaluation / sample data missing or of the wrong shape
    ├── OptionError (ValueError)           a command-line option is unusable (``--output`` names a file)
    ├── ExportError                        torch -> ONNX export or ``onnx.checker`` failed
    ├── ValidationFailed                   ONNX Runtime disagrees with PyTorch beyond tolerance, or NaN/Inf
    ├── OptimizationError                  the transformer optimizer failed, or a required fusion did not apply
    ├── QuantizationError                  a quantized variant could not be built or lacks the ops it claims
    ├── RuntimeLoadError                   ONNX Runtime cannot load a model (opset, op type)
    ├── BenchmarkError                     the benchmark runner crashed, hung or returned garbage
    ├── TargetError (ValueError)           unknown target, execution provider or provider option
    ├── DeploymentError                    `edgeport deploy` / `notify-checkpoint`: no Prefect server, a deployment or work pool refused
    ├── ServerError                        `edgeport servers`: a local MLflow / Prefect server cannot be started or stopped
    │   ├── PortInUseError (OSError)       the port a server should bind is taken
    │   ├── ServerStartError               a server exited during start-up or stayed unhealthy (log tail in the message)
    │   └── ServersNotRunning              no servers are running for this EDGEPORT_HOME
    ├── RegistryError                      MLflow tracking server / registry unreachable or refused a write
    │   └── RegistryUnavailable (ConnectionError)   transient: worth retrying
    └── PromotionError                     promotion / rollback impossible: unknown model, version or alias,
        │                                  metrics missing for the target and batch size, no previous champion
        └── PromotionRejected              the promotion gate said no (``.decision`` says why)
"""

from __future__ import annotations


class EdgeportError(Exception):
    """Root of every error edgeport raises deliberately."""


class SpecError(EdgeportError, ValueError):
    """The pipeline spec (YAML) is invalid; the message names the file, field and value."""


class CheckpointError(EdgeportError, ValueError):
    """The checkpoint is missing, truncated/corrupt, needs unsafe unpickling, or its
    state-dict keys/shapes do not match the model factory."""


class ModelFactoryError(EdgeportError, ImportError):
    """``model.factory`` ("module:callable") cannot be imported or called."""


class DataError(EdgeportError, ValueError):
    """A data file (calibration, evaluation) is missing, empty, or has the wrong keys,
    dtypes or shapes for the spec's inputs."""


class OptionError(EdgeportError, ValueError):
    """A command-line option is unusable, e.g. ``--output`` names an existing file; the message
    names the option and the value."""


class ExportError(EdgeportError):
    """The torch -> ONNX export failed, or the exported model failed ``onnx.checker``."""


class ValidationFailed(EdgeportError):
    """ONNX Runtime output differs from PyTorch beyond ``rtol``/``atol``, or contains NaN/Inf.

    Attributes:
        report: the validation report (dict) with the worst element of every output.
    """

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class OptimizationError(EdgeportError):
    """ONNX Runtime's transformer optimizer failed, or a fusion the spec requires
    (``optimization.require``) applied fewer times than asked."""


class QuantizationError(EdgeportError):
    """A quantized variant could not be built, or it does not contain the quantized
    operators its settings imply."""


class RuntimeLoadError(EdgeportError):
    """ONNX Runtime cannot create a session for a model (unsupported opset or op type)."""


class BenchmarkError(EdgeportError):
    """The benchmark runner process crashed, timed out or returned unparsable output."""


class TargetError(EdgeportError, ValueError):
    """An unknown target, execution provider, or provider option."""


class DeploymentError(EdgeportError):
    """Prefect deployments, work pools or events (``edgeport deploy``, ``edgeport notify-checkpoint``):
    no Prefect server to talk to, or it refused a work pool, deployment or event."""


class ServerError(EdgeportError):
    """A local server (``edgeport servers``) could not be started, checked or stopped."""


class PortInUseError(ServerError, OSError):
    """The port a server should bind on the chosen host is already taken."""


class ServerStartError(ServerError):
    """A server exited during start-up, or its health endpoint did not answer in time; the
    message ends with the tail of the server's log."""


class ServersNotRunning(ServerError):
    """No edgeport servers are running for this ``EDGEPORT_HOME`` (``edgeport servers up`` starts them)."""


class RegistryError(EdgeportError):
    """MLflow refused an operation, or stayed unreachable after the retries."""


class RegistryUnavailable(RegistryError, ConnectionError):
    """The MLflow tracking server did not answer: a transient error worth retrying."""


class PromotionError(EdgeportError):
    """A promotion or rollback cannot be decided: unknown registered model, version or alias,
    no recorded metrics for the chosen target and batch size, or no ``previous-champion``."""


class PromotionRejected(PromotionError):
    """The promotion gate rejected the candidate; nothing was changed.

    Attributes:
        decision: the decision (a dict: candidate and champion numbers, ``reason``).
    """

    def __init__(self, message: str, decision: dict | None = None) -> None:
        super().__init__(message)
        self.decision = decision or {}
