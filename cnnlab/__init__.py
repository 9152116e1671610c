"""cnnlab: learn to build and train convolutional networks in JAX, one YAML file per rep."""

__version__ = "0.1.0"
