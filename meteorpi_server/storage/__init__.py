"""Where records and file bytes live: the database, its tables and queries, the file store and its locks, the change feed."""
