"""The FAISS gallery (a cache of SQL faces keyed by their ids), its persistence, rebuild,
consistency checks and bulk import."""
