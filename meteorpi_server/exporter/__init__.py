"""The exporter: moves a node's records to other servers over the import protocol."""
