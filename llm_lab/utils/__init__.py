"""Small shared utilities: config loading, atomic file writes, seeding, devices."""
