"""Sub-commands of ``tumorseg``: one module each, with ``register(subparsers)``."""
