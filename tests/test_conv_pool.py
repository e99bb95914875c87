"""The fused first-block kernel gives PyTorch's conv + max pool and their gradients."""

import shutil

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_train import IMAGE_SIZE, MODEL_CFG, make_store

from fewcells import conv_pool, train
from fewcells.model import PaperCNN
from fewcells.train import run_training

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the fused kernel cannot be built here (PyTorch's layers are used)",
)


@pytest.fixture(scope="module")
def kernel():
    module, how = conv_pool.load_kernel()
    assert module is not None, how
    return module


def reference(x, weight, bias):
    return F.max_pool2d(F.conv2d(x, weight, bias), 2)


def gradients(pooled, weight, bias, grad):
    return torch.autograd.grad((pooled.relu() * grad).sum(), (weight, bias))


SHAPES = [(5, 3, 257, 257), (2, 3, 400, 300), (3, 3, 21, 35), (1, 3, 4, 18)]


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_on_integer_values(kernel, shape):
    # small integers: every sum is exact in float32 whatever its order, and ties are common,
    # so values, argmax choices and gradients must equal PyTorch's to the bit
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, shape, generator=generator).float()
    weight = torch.randint(-3, 4, (4, 3, 3, 3), generator=generator).float().requires_grad_()
    bias = torch.randint(-3, 4, (4,), generator=generator).float().requires_grad_()
    expected = reference(x, weight, bias)
    fused = conv_pool._ConvPoolFunction.apply(x, weight, bias)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fused, expected)
    grad = torch.randint(-3, 4, expected.shape, generator=generator).float()
    want = gradients(expected, weight, bias, grad)
    for got, wanted in zip(gradients(fused, weight, bias, grad), want, strict=True):
        assert torch.equal(got, wanted)


def test_close_on_real_values(kernel):
    torch.manual_seed(0)
    x = torch.rand(5, 3, 257, 257)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    expected = reference(x, weight, bias)
    fused = conv_pool._ConvPoolFunction.apply(x, weight, bias)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    want = gradients(expected, weight, bias, grad)
    for got, wanted in zip(gradients(fused, weight, bias, grad), want, strict=True):
        torch.testing.assert_close(got, wanted, rtol=1e-4, atol=1e-4 * wanted.abs().max().item())


def test_argmax_is_pytorchs_choice_among_ties(kernel):
    # a piecewise-constant image: most windows hold equal values; the first one wins
    x = torch.zeros(2, 3, 40, 40)
    x[:, :, 10:25, 5:30] = 0.5
    x[1, 1, ::7] = 1.0
    weight, bias = torch.randn(4, 3, 3, 3), torch.randn(4)
    pooled, argmax = kernel.forward(x, weight, bias)
    conv = F.conv2d(x, weight, bias)
    expected, indices = F.max_pool2d(conv, 2, return_indices=True)
    rows, cols = indices // conv.shape[-1], indices % conv.shape[-1]
    pytorch_choice = (rows % 2) * 2 + cols % 2  # 0..3 in row-major order within the window
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(argmax.permute(0, 3, 1, 2).long(), pytorch_choice)


def test_results_do_not_depend_on_the_thread_count(kernel):
    torch.manual_seed(1)
    x, weight, bias = torch.rand(6, 3, 64, 80), torch.randn(4, 3, 3, 3), torch.randn(4)
    grad = torch.randn(6, 4, 31, 39)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            pooled, argmax = kernel.forward(x, weight, bias)
            results.append((pooled, argmax, *kernel.backward(grad, x, argmax)))
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*results, strict=True):
        assert torch.equal(one, three)


def test_network_uses_the_kernel_only_where_no_input_gradient_is_needed(kernel, monkeypatch):
    torch.manual_seed(0)
    network = PaperCNN(2, image_size=IMAGE_SIZE)
    x = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    plain = network(x)
    network.fused_first_block = True
    calls = []

    def counted(x, weight, bias):
        calls.append(x.shape)
        return reference(x, weight, bias).contiguous(memory_format=torch.channels_last)

    monkeypatch.setattr(conv_pool._ConvPoolFunction, "apply", counted)
    torch.testing.assert_close(network(x), plain)
    assert len(calls) == 1
    saliency_input = x.clone().requires_grad_()
    network(saliency_input).sum().backward()  # saliency: PyTorch's layers, input gradient
    assert len(calls) == 1 and saliency_input.grad is not None


def test_kernel_refuses_to_give_an_input_gradient(kernel):
    x = torch.rand(1, 3, 20, 20, requires_grad=True)
    out = conv_pool._ConvPoolFunction.apply(x, torch.randn(4, 3, 3, 3), torch.randn(4))
    with pytest.raises(RuntimeError, match="no input gradient"):
        out.sum().backward()


@pytest.fixture(scope="module")
def both_ways(kernel, tmp_path_factory):
    """One small training with the fused kernel and one with PyTorch's layers."""
    root = tmp_path_factory.mktemp("fused")
    dataset = make_store(root / "data")
    cfg = {"max_epochs": 6, "patience": 6}
    infos = {
        fused: run_training(
            *dataset,
            0,
            16,
            {**cfg, "fused_first_block": fused},
            MODEL_CFG,
            root / f"fused_{fused}",
            image_size=IMAGE_SIZE,
        )  # fmt: skip
        for fused in (True, False)
    }
    return root, infos


def test_training_with_the_kernel_gives_pytorchs_results(both_ways):
    root, infos = both_ways
    assert infos[True]["first_block"] == conv_pool.load_kernel()[1]
    assert infos[False]["first_block"] == "pytorch"
    fused, plain = (pd.read_csv(root / f"fused_{f}" / "history.csv") for f in (True, False))
    for column in ("train_loss", "val_loss"):
        # float rounding only: the curves agree to 4 digits over six epochs
        assert fused[column].to_numpy() == pytest.approx(plain[column].to_numpy(), rel=1e-4)
    fused, plain = (pd.read_csv(root / f"fused_{f}" / "predictions.csv") for f in (True, False))
    assert fused["p_bright"].to_numpy() == pytest.approx(plain["p_bright"].to_numpy(), abs=1e-4)


def test_training_falls_back_to_pytorch_where_the_kernel_cannot_be_built(tmp_path, monkeypatch):
    monkeypatch.setattr(conv_pool, "load_kernel", lambda: (None, "unavailable (no compiler)"))
    monkeypatch.setattr(train, "load_kernel", conv_pool.load_kernel)
    dataset = make_store(tmp_path / "data")
    info = run_training(
        *dataset, 0, 8, {"max_epochs": 1}, MODEL_CFG, tmp_path / "job", image_size=IMAGE_SIZE
    )
    assert info["first_block"] == "pytorch: fused kernel unavailable (no compiler)"


def test_a_build_that_fails_is_reported_not_raised(monkeypatch, tmp_path):
    conv_pool.load_kernel.cache_clear()
    try:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
        monkeypatch.setattr(conv_pool, "SOURCE", tmp_path / "broken.cpp")
        (tmp_path / "broken.cpp").write_text("this is not C++\n")
        module, how = conv_pool.load_kernel()
        assert module is None and how.startswith("unavailable (")
    finally:
        conv_pool.load_kernel.cache_clear()
