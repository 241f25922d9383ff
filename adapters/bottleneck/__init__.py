"""Bottleneck adapters (Houlsby / Pfeiffer), our own: PEFT has none and its registry is closed.

Merging (``regiontune merge``): the inherited default, the weighted average of the down and up
projections of adapters of one configuration (``MethodDefaults.merge``).
"""

from .config import BottleneckConfig
from .layer import BottleneckLayer
from .model import BOTTLENECK, BottleneckModel

__all__ = ["BOTTLENECK", "BottleneckConfig", "BottleneckLayer", "BottleneckModel"]
