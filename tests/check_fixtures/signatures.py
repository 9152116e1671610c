"""Functions whose signatures do not fit the contract (bad input for `cnnlab check`)."""


def conv2d(x, w, b, stride=1):
    return x


def dense(x, w, b, scale):
    return x


def softmax_forward(logits):
    return logits, None
