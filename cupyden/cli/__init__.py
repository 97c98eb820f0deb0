"""Command-line tools: one module per command, ``main(argv=None) -> int``."""
