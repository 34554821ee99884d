"""DutyWatch host agent: watches operations and names who answers for them."""

__version__ = "0.1.0"
