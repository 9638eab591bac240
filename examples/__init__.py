"""Examples of a user's own code trained by jaxtrain: importable from the repository root."""
