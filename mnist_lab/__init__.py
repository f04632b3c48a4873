"""mnist-lab: an experiment lab for convolutional networks on MNIST."""

__version__ = "0.1.0"
