"""vlp stage."""
