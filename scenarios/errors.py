"""The scenarios' typed error (light: the strategy registry raises it without importing torch)."""

from continual_mem.errors import ContinualMemError


class ScenarioError(ContinualMemError):
    """A scenario that cannot be built: unknown name, bad class order, missing data, bad strategy."""
