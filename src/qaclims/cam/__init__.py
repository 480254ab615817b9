"""cam stage."""
