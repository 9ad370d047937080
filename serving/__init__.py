"""serving package (filled in by later issues)."""

__all__: list[str] = []
