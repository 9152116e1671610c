"""A model written as two pure JAX functions, used by custom_pure.yaml.

cnnlab calls

    TinyConvNet.init(key, input_shape, num_classes, **args) -> params   (any pytree of arrays)
    TinyConvNet.apply(params, x, *, train, key) -> logits                (batch, num_classes)

with float32 NHWC batches `x`; `key` drives dropout while training.
"""

import jax
import jax.numpy as jnp


def conv(x, kernel, bias):
    # NHWC input, HWIO kernel, 'SAME' padding: the output keeps the height and width
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias


class TinyConvNet:
    @staticmethod
    def init(key, input_shape, num_classes, width=16):
        channels = input_shape[-1]
        k1, k2 = jax.random.split(key)
        fan_in = 3 * 3 * channels
        features = input_shape[0] * input_shape[1] * width
        return {
            "conv_kernel": jax.random.normal(k1, (3, 3, channels, width)) * jnp.sqrt(2.0 / fan_in),
            "conv_bias": jnp.zeros(width),
            "dense_kernel": jax.random.normal(k2, (features, num_classes))
            * jnp.sqrt(1.0 / features),
            "dense_bias": jnp.zeros(num_classes),
        }

    @staticmethod
    def apply(params, x, *, train, key):
        x = jax.nn.relu(conv(x, params["conv_kernel"], params["conv_bias"]))
        x = x.reshape(x.shape[0], -1)  # flatten
        if train:  # dropout, rate 0.1, scaled so evaluation needs no change
            keep = jax.random.bernoulli(key, 0.9, x.shape)
            x = jnp.where(keep, x / 0.9, 0.0)
        return x @ params["dense_kernel"] + params["dense_bias"]
