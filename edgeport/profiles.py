"""Built-in target profiles and managed environments: data only, no behaviour.

:mod:`edgeport.spec` validates a target against these tables and :mod:`edgeport.targets`
resolves and builds what they name; keeping the tables here lets both import them at
module top without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["CURRENT_ENV", "ENVIRONMENTS", "PROFILES", "Profile"]

#: ``TargetSpec.env`` value meaning "the interpreter running edgeport" (``sys.executable``).
CURRENT_ENV = "current"

@dataclass(frozen=True)
class Profile:
    """A built-in target profile: defaults for :class:`~edgeport.spec.TargetSpec` fields.

    Attributes:
        name: the profile's name (``cpu``, ``cpu-1t``, ``openvino-cpu``).
        description: one line for ``edgeport targets list``.
        settings: TargetSpec field -> default value (``providers``, ``provider_options``,
            ``intra_op_num_threads``, ``inter_op_num_threads``, ``graph_optimization_level``,
            ``execution_mode``, ``env``).
    """

    name: str
    description: str
    settings: Mapping[str, Any] = field(default_factory=dict)


_CPU = "CPUExecutionProvider"
_OPENVINO = "OpenVINOExecutionProvider"

#: Built-in profiles, by name.
PROFILES: Mapping[str, Profile] = MappingProxyType(
    {
        "cpu": Profile(
            "cpu",
            "CPU EP, ONNX Runtime's default threads (one intra-op thread per physical core)",
            {"providers": [_CPU], "intra_op_num_threads": 0, "inter_op_num_threads": 0, "env": CURRENT_ENV},
        ),
        "cpu-1t": Profile(
            "cpu-1t",
            "CPU EP, one intra-op and one inter-op thread (a small edge device)",
            {"providers": [_CPU], "intra_op_num_threads": 1, "inter_op_num_threads": 1, "env": CURRENT_ENV},
        ),
        "openvino-cpu": Profile(
            "openvino-cpu",
            "OpenVINO EP on the CPU device (CPU EP for the nodes it leaves), managed env 'openvino'",
            {
                "providers": [_OPENVINO, _CPU],
                "provider_options": {_OPENVINO: {"device_type": "CPU"}},
                "env": "openvino",
            },
        ),
    }
)

#: Managed environments, by name: ``packages`` are installed (``pip install``), and
#: ``constraints`` pin their dependencies (``pip install -c``) so a rebuild gets the
#: same set; ``expects`` are execution providers the environment must make available.
#: onnxruntime-openvino 1.24.1 (cp311, manylinux_2_28 x86_64; bundles ONNX Runtime
#: 1.24.1 and OpenVINO 2025.4.1) requires numpy>=1.21.6, flatbuffers, packaging,
#: protobuf, sympy; the pins below are the versions edgeport's own environment uses
#: (``constraints.txt``).
ENVIRONMENTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "openvino": {
            "description": "onnxruntime-openvino: ONNX Runtime 1.24.1 with OpenVINO 2025.4.1 (Intel CPU/GPU/NPU)",
            "packages": ["onnxruntime-openvino==1.24.1", "numpy==2.4.6"],
            "constraints": ["flatbuffers==25.12.19", "packaging==26.3", "protobuf==7.36.2", "sympy==1.14.0", "mpmath==1.3.0"],
            "expects": [_OPENVINO],
        },
    }
)
