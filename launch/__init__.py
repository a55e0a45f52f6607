"""dlrrec launch stage."""
