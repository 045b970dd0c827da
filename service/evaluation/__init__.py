"""The cross-model evaluation protocol (docs/PROTOCOL.md), torch-free: NumPy + FAISS.

It lives on the service side because the registry scores an uploaded transformer on validation
pairs with it; the training side (``training.evaluation``) builds experiments and reports on it.
"""
