"""Entry point of `python -m logq`, the same command line as `logq`."""

from logq.cli import app

if __name__ == "__main__":
    app(prog_name="logq")
