"""One module per `stepdpo` command: its options (typer parameters) beside the function that wires them to a stage.

A command module parses and checks options, then calls library functions (stages, backends, runner); cli.py
registers the commands on the app. Shared option types and their range checks are in options.py.
"""
