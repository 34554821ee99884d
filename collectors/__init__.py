"""Event sources for DutyWatch, one module per source."""
