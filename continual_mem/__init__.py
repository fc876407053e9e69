"""continual-mem: grow one frozen vision transformer into many tasks with learnable memory tokens.

The core (this package's `adapter`, `attention`, `model`, `backbone`, `train`) imports neither the
task store nor Avalanche; `continual_mem.cli` composes them.
"""

__version__ = "0.1.0"
