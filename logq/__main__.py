"""Entry point of `python -m logq`, the same command line as `logq`."""

from logq.cli import app

app(prog_name="logq")
