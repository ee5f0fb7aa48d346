"""Tiny real models for the scale-out tests (imported by worker processes via PYTHONPATH)."""
