"""The built-in search spaces (package data): ``search_space: quick`` in a task file names ``quick.yaml`` here."""
