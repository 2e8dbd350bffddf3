"""Data: reading photos, caption datasets, the feature cache, and the word tables the package ships (the JSON files here)."""
