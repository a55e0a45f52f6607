"""The ground layer: errors, strict configs, artifacts and fingerprints, the job entry, the process group. Imports no stage."""
