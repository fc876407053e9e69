"""continual-mem: grow one frozen vision transformer into many tasks with learnable memory tokens.

The core (this package's modules: `adapter`, `attention`, `model`, `backbone`, `data`, `train`,
...) imports neither the task store nor Avalanche. `continual_mem.services` composes the core with
the store (what the CLI and a server call); `continual_mem.cli` is the `cmem` command.
tests/test_layers.py checks these rules.
"""

__version__ = "0.1.0"
