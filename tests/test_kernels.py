"""The fused kernel of the paper CNN's first three blocks gives PyTorch's values and gradients."""

import shutil

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_train import IMAGE_SIZE, MODEL_CFG, make_store

from fewcells.training.kernels import loader, paper_stem
from fewcells.training.models import PaperCNN
from fewcells.training.run import run_training

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="no C++ compiler: the fused kernel cannot be built here (PyTorch's layers are used)",
)
PARAMETER_SHAPES = [(4, 3, 3, 3), (4,), (8, 4, 3, 3), (8,), (8, 8, 3, 3), (8,)]


@pytest.fixture(scope="module")
def kernel():
    module, how = loader.load_kernel()
    assert module is not None, how
    return module


def reference(x, weight1, bias1, weight2, bias2, weight3, bias3):
    """The same blocks with PyTorch's layers."""
    block1 = F.max_pool2d(F.conv2d(x, weight1, bias1), 2)
    block2 = F.max_pool2d(F.conv2d(block1.relu(), weight2, bias2), 2)
    return F.max_pool2d(F.conv2d(block2.relu(), weight3, bias3), 2)


def gradients(output, parameters, grad):
    return torch.autograd.grad((output * grad).sum(), parameters)


@pytest.mark.parametrize("shape", [(5, 3, 257, 257), (2, 3, 400, 300), (1, 3, 78, 81)])
def test_exact_on_integer_values(kernel, shape):
    # small integers: every sum is exact in float32 whatever its order, and ties are common,
    # so values, max-pooling choices and gradients must equal PyTorch's to the bit
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, shape, generator=generator).float()
    parameters = [
        torch.randint(-2, 3, size, generator=generator).float().requires_grad_()
        for size in PARAMETER_SHAPES
    ]
    expected = reference(x, *parameters)
    fused = paper_stem.PaperStemFunction.apply(x, *parameters)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fused, expected)
    grad = torch.randint(-2, 3, expected.shape, generator=generator).float()
    wanted = gradients(expected, parameters, grad)
    for got, want in zip(gradients(fused, parameters, grad), wanted, strict=True):
        assert torch.equal(got, want)


def test_close_on_real_values(kernel):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 257, 257, generator=generator)
    parameters = [
        (0.3 * torch.randn(size, generator=generator)).requires_grad_() for size in PARAMETER_SHAPES
    ]
    expected = reference(x, *parameters)
    fused = paper_stem.PaperStemFunction.apply(x, *parameters)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn(expected.shape, generator=generator)
    wanted = gradients(expected, parameters, grad)
    for got, want in zip(gradients(fused, parameters, grad), wanted, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_results_do_not_depend_on_the_thread_count(kernel):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 80, 96, generator=generator)
    parameters = [torch.randn(size, generator=generator) for size in PARAMETER_SHAPES]
    grad = torch.randn(6, 8, 8, 10, generator=generator)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            pooled3, argmax3, pooled2, argmax2, pooled1, argmax1 = kernel.forward(x, *parameters)
            saved = (pooled1, argmax1, pooled2, argmax2, argmax3)
            grads = kernel.backward(grad, x, *saved, *parameters[::2])
            results.append([pooled3, argmax3, *saved, *grads])
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*results, strict=True):
        assert torch.equal(one, three)


def test_network_uses_the_kernel_only_where_no_input_gradient_is_needed(kernel, monkeypatch):
    torch.manual_seed(0)
    network = PaperCNN(2, image_size=IMAGE_SIZE)
    x = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    plain = network(x)
    network.fused_cpu_kernel = True
    calls = []

    def counted(x, *parameters):
        calls.append(x.shape)
        return reference(x, *parameters).contiguous(memory_format=torch.channels_last)

    monkeypatch.setattr(paper_stem.PaperStemFunction, "apply", counted)
    torch.testing.assert_close(network(x), plain)
    assert len(calls) == 1
    saliency_input = x.clone().requires_grad_()
    network(saliency_input).sum().backward()  # saliency: PyTorch's layers, input gradient
    assert len(calls) == 1 and saliency_input.grad is not None


def test_kernel_refuses_to_give_an_input_gradient(kernel):
    x = torch.rand(1, 3, 80, 80, requires_grad=True)
    parameters = [torch.randn(size) for size in PARAMETER_SHAPES]
    with pytest.raises(RuntimeError, match="no input gradient"):
        paper_stem.PaperStemFunction.apply(x, *parameters).sum().backward()


@pytest.fixture(scope="module")
def both_ways(kernel, tmp_path_factory):
    """One small training with the fused kernel and one with PyTorch's layers."""
    root = tmp_path_factory.mktemp("fused")
    dataset = make_store(root / "data")
    cfg = {"max_epochs": 2, "patience": 2}
    infos = {
        fused: run_training(
            *dataset,
            0,
            16,
            {**cfg, "fused_cpu_kernel": fused},
            MODEL_CFG,
            root / f"fused_{fused}",
            image_size=IMAGE_SIZE,
        )  # fmt: skip
        for fused in (True, False)
    }
    return root, infos


def test_training_with_the_kernel_gives_pytorchs_results(both_ways):
    root, infos = both_ways
    assert infos[True]["cpu_kernel"] == loader.load_kernel()[1]
    assert infos[False]["cpu_kernel"] == "pytorch"
    fused, plain = (pd.read_csv(root / f"fused_{f}" / "history.csv") for f in (True, False))
    for column in ("train_loss", "val_loss"):
        # float rounding only: the curves agree to 4 digits over two epochs (the optimiser
        # amplifies rounding differences as training goes on; docs/methods.md,
        # Reproducibility)
        assert fused[column].to_numpy() == pytest.approx(plain[column].to_numpy(), rel=1e-4)
    fused, plain = (pd.read_csv(root / f"fused_{f}" / "predictions.csv") for f in (True, False))
    assert fused["p_bright"].to_numpy() == pytest.approx(plain["p_bright"].to_numpy(), abs=1e-4)


def test_training_falls_back_to_pytorch_where_the_kernel_cannot_be_built(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "load_kernel", lambda: (None, "unavailable (no compiler)"))
    dataset = make_store(tmp_path / "data")
    info = run_training(
        *dataset, 0, 8, {"max_epochs": 1}, MODEL_CFG, tmp_path / "job", image_size=IMAGE_SIZE
    )
    assert info["cpu_kernel"] == "pytorch: fused kernel unavailable (no compiler)"


def test_a_build_that_fails_is_reported_not_raised(monkeypatch, tmp_path):
    loader.load_kernel.cache_clear()
    try:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
        monkeypatch.setattr(loader, "SOURCES", [tmp_path / "broken.cpp"])
        (tmp_path / "broken.cpp").write_text("this is not C++\n")
        module, how = loader.load_kernel()
        assert module is None and how.startswith("unavailable (")
        assert [p.name for p in tmp_path.glob("fewcells_paper_stem_*") if p.is_dir()]
    finally:
        loader.load_kernel.cache_clear()


def test_no_compiler_is_reported_by_name(monkeypatch, tmp_path):
    loader.load_kernel.cache_clear()
    try:
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
        module, how = loader.load_kernel()
        assert module is None and "no C++ compiler" in how and "no-such-c++" in how
    finally:
        loader.load_kernel.cache_clear()
