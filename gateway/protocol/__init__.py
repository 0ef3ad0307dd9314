"""Pure protocol core: no sockets, no files, no clock reads."""
