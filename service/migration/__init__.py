"""Progressive migration: native vectors captured from confident matches (capture rule,
provenance, undo), search across spaces fused per identity on one calibrated scale, status."""
