"""triage: topic, sentiment, urgency and complaint triage for Chinese customer messages."""

from triage.errors import ConfigError, InputError, ModelError, TriageError
from triage.schemas import Customer, Message, TriageResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Customer",
    "InputError",
    "Message",
    "ModelError",
    "TriageError",
    "TriageResult",
    "__version__",
]
