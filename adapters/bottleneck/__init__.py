"""Bottleneck adapters (Houlsby / Pfeiffer), our own: PEFT has none and its registry is closed."""

from .config import BottleneckConfig
from .layer import BottleneckLayer
from .model import BOTTLENECK, BottleneckModel

__all__ = ["BOTTLENECK", "BottleneckConfig", "BottleneckLayer", "BottleneckModel"]
