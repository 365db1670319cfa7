"""Tiny random models with the real interfaces, for tests and smoke runs without weights."""
