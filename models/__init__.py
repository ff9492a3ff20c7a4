"""Model engines (installed as ``triage.models``)."""
