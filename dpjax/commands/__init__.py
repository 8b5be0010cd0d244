"""CLI commands, one module each; see dpjax/cli.py."""
