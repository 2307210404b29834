"""Layer converters by Keras layer family; importing this package registers them all."""

from conversion.families import activations, conv, keras_tcn, merge, norm, reshape  # noqa: F401
