"""The harness's name for the one user-facing exception (defined in the bottom layer, kernels/errors.py,
so kernels and variants raise it without importing anything above them)."""

from kernels.errors import UserError, did_you_mean

__all__ = ["UserError", "did_you_mean"]
