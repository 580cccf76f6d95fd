"""Request semantics, independent of the wire: validation and routing."""
