"""One module per ``dutywatch`` command."""
