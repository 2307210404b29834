"""Layer converters by Keras layer family; importing this package registers them all."""

from conversion.families import (  # noqa: F401
    activations,
    conv,
    keras_tcn,
    merge,
    norm,
    recurrent,
    reshape,
    sequence,
    wrappers,
)
