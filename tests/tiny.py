"""Tiny models of the real interfaces, built in the tests (nothing is downloaded)."""

from dynamicid.testing.tiny_models import CROSS_DIM
from dynamicid.testing.tiny_models import tiny_unet as _tiny_unet


def tiny_unet(seed: int = 0):
    return _tiny_unet(seed).eval()


__all__ = ["CROSS_DIM", "tiny_unet"]
