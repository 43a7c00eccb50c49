"""driftscope: is held-out forgetting after a fine-tune lost knowledge or output bias?

The library API is what this module exports. The CLI is a thin client of it and
of the modules behind its other commands (gates, report, weights, lmeval, bench,
zoo), each imported inside the command that uses it so `driftscope --help`
stays fast.
"""

__version__ = "0.1.0"

from driftscope.verdict import Thresholds  # noqa: E402
from driftscope.errors import DriftscopeError, ModelError, ProbeError, TokenizerMismatch  # noqa: E402
from driftscope.probes import Probe, ProbeSuite, list_suites, load_suite  # noqa: E402
from driftscope.result import DriftResult  # noqa: E402
from driftscope.run import capture_base, compare  # noqa: E402

__all__ = [
    "DriftResult",
    "DriftscopeError",
    "ModelError",
    "Probe",
    "ProbeError",
    "ProbeSuite",
    "Thresholds",
    "TokenizerMismatch",
    "capture_base",
    "compare",
    "list_suites",
    "load_suite",
]
