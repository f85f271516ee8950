"""One module per command: resolve the settings once (settings.resolve), call the library, print.

Each command is also a function of the package (`scratchlm.train(run, preset="auto", ...)`) with the same
settings as the command line; cli.py builds the command line from these functions and the config
dataclasses. A command never imports another command, and the library never imports a command.
"""
