"""dlrrec features stage."""
