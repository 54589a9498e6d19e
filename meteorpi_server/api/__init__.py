"""HTTP blueprints. Route functions only parse the request and shape the reply."""
