"""Commands a person runs against a daemon's files and store: they never import the daemon's pipeline."""
