"""The torture campaign and the invariant checker live beside their tests (importable here)."""
