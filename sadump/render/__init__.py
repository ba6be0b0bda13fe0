"""Renderers: turn analysis results into text for people and JSON for runbooks. Pure: they
take an Analysis (or the kernel layer's records) and return lines or data; the CLI prints.
Nothing is imported here, so that the CLI can import each one lazily, when a command needs it."""
