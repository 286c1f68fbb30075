"""Hardware profiles: one data file per target (energy per operation, core limits)."""
