"""irn stage."""
