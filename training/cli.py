"""The training side's command groups, each a ``typer.Typer`` named by an entry point of the
``facebridge.commands`` group in pyproject.toml (``service.cli`` loads them; docs/cli.md):

- ``training.transformers.cli``  -> ``facebridge transformer fit|evaluate`` (added to the
  service's ``transformer`` group: upload, list, activate, rollback, ...)
- ``training.evaluation.cli``    -> ``facebridge experiments run ...``
- ``training.data.cli``          -> ``facebridge pairs extract ...``
- ``training.backbones.cli``     -> ``facebridge backbone train|export ...``
- ``training.demo.cli``          -> ``facebridge demo ...``

Each module imports torch inside its commands only, so ``facebridge --help`` stays fast.
"""
