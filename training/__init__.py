"""facebridge offline side (torch): backbones, pairs, transformers, evaluation, export."""
