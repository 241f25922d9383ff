"""Region adapters: one module per method, one registry.

``lora``, ``adalora``, ``ia3`` (PEFT), ``bottleneck`` (ours) and ``full`` (full fine-tuning,
so benchmarks treat every method alike). Every method carries the item-side part.
"""

from . import adalora, bottleneck, full, ia3, lora  # noqa: F401  (each registers itself)
from .base import METHODS, AdapterMethod, count_trainable, get_method, register
from .folder import AdapterFolder
from .io import load_adapter, save_adapter
from .item_side import ItemSide
from .region_task import RegionTask

__all__ = ["METHODS", "AdapterFolder", "AdapterMethod", "ItemSide", "RegionTask",
           "count_trainable", "get_method", "load_adapter", "register", "save_adapter"]
