"""Training commands are registered by ``service.cli`` from their own modules:

- ``training.transformers.cli``  -> ``facebridge transformer fit|evaluate|export ...``
- ``training.evaluation.cli``    -> ``facebridge experiments run ...``
- ``training.data.cli``          -> ``facebridge pairs extract ...``
- ``training.backbones.cli``     -> ``facebridge backbone train|export ...``
- ``training.demo``              -> ``facebridge demo ...``

Each module imports torch inside its commands only, so ``facebridge --help`` stays fast.
"""
