"""The REST API (installed as ``triage.api``)."""
