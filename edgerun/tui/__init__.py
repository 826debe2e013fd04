"""The `edgerun chat` terminal UI. Importing this package is cheap: Textual loads on run.

The command's flags are in edgerun/cli/chat.py.
"""
