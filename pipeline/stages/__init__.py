"""Stage implementations: one file per stage."""
