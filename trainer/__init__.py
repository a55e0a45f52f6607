"""dlrrec trainer stage."""
