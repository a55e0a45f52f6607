"""dlrrec similarity stage."""
