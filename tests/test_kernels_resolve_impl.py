"""resolve_impl: the one switch between the Triton kernels and the eager references."""
import os

import pytest
import torch

import fastmine_kernels as fk
from fastmine_kernels import _impl

# on a GPU machine the same tests run the compiled kernels on CUDA tensors
pytestmark = pytest.mark.usefixtures("kernel_device")


def test_auto_on_cpu_is_torch():
    cpu = torch.device("cpu")
    assert fk.resolve_impl("auto", torch.zeros(2, device=cpu), torch.zeros(3, device=cpu)) == "torch"
    assert fk.resolve_impl("torch", torch.zeros(2)) == "torch"


def test_unknown_impl_lists_the_valid_values():
    with pytest.raises(ValueError, match=r"'auto', 'triton', 'torch'"):
        fk.resolve_impl("cuda", torch.zeros(2))
    with pytest.raises(ValueError, match="valid values"):
        fk.interpolate(torch.zeros(2, 3), torch.zeros(2, 3), impl="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU machines only: kernels compiled for CUDA there")
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    assert os.environ.get("TRITON_INTERPRET") == "1"  # set by tests/conftest.py on CPU machines
    assert fk.resolve_impl("triton", torch.zeros(2)) == "triton"
    monkeypatch.setattr(_impl, "INTERPRETED", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fk.resolve_impl("triton", torch.zeros(2))
