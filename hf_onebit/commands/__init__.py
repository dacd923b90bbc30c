"""Subcommands of ``hf-onebit``; each module has ``add_parser(subparsers)`` which sets ``run`` as the default."""
