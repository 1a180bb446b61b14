"""Subcommands beside LightningCLI's fit / validate / test / predict, one module each.

Each module has ``main(argv)``; ``siglip_lightning/cli.py`` lists them in ``EXTRA_COMMANDS``. Options are
parsed by jsonargparse (as LightningCLI's), so every command takes ``--help``, ``--config`` and
``--print_config``.
"""
