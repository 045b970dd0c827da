"""Transformer versions (upload, validate, activate, roll back, delete) and the hot-swap holder."""
