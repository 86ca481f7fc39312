"""The `alpacakit` command line. Each module parses arguments and calls one library function."""
