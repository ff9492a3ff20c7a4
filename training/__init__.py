"""Corpus, training and evaluation entry points (installed as ``triage.training``)."""
