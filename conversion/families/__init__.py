"""Layer converters by Keras layer family; importing this package registers them all."""
from conversion.families import activations, conv, merge, norm, reshape  # noqa: F401
