"""A camera node's own records: recording them, and demo data."""
