"""qape stage."""
