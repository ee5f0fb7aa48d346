"""A tiny MLP whose depth, widths and dropout are init arguments, and its datamodule (issue 14 tests)."""
