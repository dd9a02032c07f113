"""jaxforget: example-level forgetting of fine-tuned language models, in JAX.

Subpackages are imported lazily by their users; importing ``jaxforget`` itself stays cheap.
``jaxforget.completion`` depends on jax and numpy only and can be imported into other research code.
"""

__version__ = "0.1.0"
