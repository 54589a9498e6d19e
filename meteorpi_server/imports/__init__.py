"""Receiving records and file bytes from exporters: the legacy handshake, the receiver contract, batches, bundles and resumable uploads."""
