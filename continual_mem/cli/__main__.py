"""`python -m continual_mem.cli` (what torchrun can launch as well as the `cmem` script)."""

from continual_mem.cli import main

main()
