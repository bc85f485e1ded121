"""Data: sources and the offline catalog, the train/validation/test carve, domain shifts, hftl's caches."""
