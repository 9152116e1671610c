"""A model written as a Flax NNX module, used by custom_nnx.yaml.

cnnlab constructs it as `SmallNet(in_shape=(H, W, C), num_classes=N, rngs=nnx.Rngs(seed),
**args)` and calls it on float32 NHWC batches; it returns (batch, N) logits. Batch norm and
dropout follow cnnlab's training/evaluation switch by themselves.
"""

import jax
from flax import nnx


class SmallNet(nnx.Module):
    def __init__(
        self, in_shape, num_classes, *, rngs: nnx.Rngs, width: int = 16, dropout: float = 0.1
    ):
        channels = in_shape[-1]
        self.conv1 = nnx.Conv(channels, width, kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.norm1 = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, kernel_size=(3, 3), rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(2 * width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.norm1(self.conv1(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = jax.nn.relu(self.conv2(x))
        x = x.mean(axis=(1, 2))  # global average pool
        return self.head(self.dropout(x))
