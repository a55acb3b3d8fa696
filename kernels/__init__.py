"""Triton kernels for fastmine, each beside its eager PyTorch reference (imported as
``fastmine_kernels``). They know nothing about GANs."""
