"""Transformers = small mapping networks from the new model's space into the old one's.

Models, losses, interpolation (synthetic pairs), recipes, fitting and ONNX export. Importing this
package imports no torch; the submodules that need it import it themselves.
"""
