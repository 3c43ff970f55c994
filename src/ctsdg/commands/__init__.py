"""One module per ``ctsdg`` subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``."""
