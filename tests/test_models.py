import pytest
import torch

from fewcells.errors import FewcellsError
from fewcells.training.models import MIN_IMAGE_SIZE, PaperCNN, build_model, to_model_input


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_paper():
    assert n_parameters(PaperCNN(2, image_size=257)) == 7_210
    assert n_parameters(PaperCNN(6, image_size=257)) == 7_342


def test_flatten_size_follows_image_size():
    assert PaperCNN(2, image_size=257).hidden.in_features == 16 * 2 * 2
    assert PaperCNN(2, image_size=400).hidden.in_features == 16 * 4 * 4


def test_forward_at_400_px_gives_logits_per_class():
    model = PaperCNN(2, image_size=400)
    assert model(torch.rand(2, 3, 400, 400)).shape == (2, 2)


def test_embed_is_the_hidden_layer_after_relu():
    torch.manual_seed(0)
    model = PaperCNN(6, image_size=257)
    x = torch.rand(3, 3, 257, 257)
    embedding = model.embed(x)
    assert embedding.shape == (3, 32)
    assert (embedding >= 0).all()
    torch.testing.assert_close(model.classifier(embedding), model(x))


def test_layers_are_named_submodules():
    model = PaperCNN(2)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 8, 8, 16, 16]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert isinstance(model.hidden, torch.nn.Linear) and model.hidden.out_features == 32
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.out_features == 2


def test_too_small_images_are_refused():
    PaperCNN(2, image_size=MIN_IMAGE_SIZE)
    with pytest.raises(FewcellsError, match="image_size"):
        PaperCNN(2, image_size=MIN_IMAGE_SIZE - 1)


def test_build_model_reads_the_config():
    model = build_model({"name": "paper_cnn", "hidden": 16}, n_classes=3, image_size=257)
    assert isinstance(model, PaperCNN)
    assert model.hidden.out_features == 16 and model.classifier.out_features == 3


def test_build_model_rejects_unknown_names():
    with pytest.raises(FewcellsError, match="model.name.*resnet"):
        build_model({"name": "resnet"}, n_classes=2, image_size=257)


def test_to_model_input_scales_and_moves_channels_first():
    images = torch.zeros(2, 4, 5, 3, dtype=torch.uint8)
    images[1, 2, 3] = torch.tensor([255, 51, 0], dtype=torch.uint8)
    x = to_model_input(images)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x[1, :, 2, 3], torch.tensor([1.0, 0.2, 0.0]))
    assert x.sum() == pytest.approx(1.2)
    assert x.is_contiguous()
    every_value = torch.arange(256, dtype=torch.uint8).reshape(1, 4, 64, 1).expand(2, 4, 64, 3)
    assert torch.equal(to_model_input(every_value), every_value.permute(0, 3, 1, 2).float() / 255.0)


def test_pooling_before_relu_gives_exactly_the_papers_conv_relu_pool():
    torch.manual_seed(0)
    model = PaperCNN(2, image_size=257)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    paper_order = [[conv, torch.nn.ReLU(), torch.nn.MaxPool2d(2)] for conv in convs]
    paper_features = torch.nn.Sequential(*sum(paper_order, []), torch.nn.Flatten())
    assert [type(m).__name__ for m in paper_features[:3]] == ["Conv2d", "ReLU", "MaxPool2d"]
    x = torch.rand(4, 3, 257, 257) - 0.5
    ours = model.features(x)
    theirs = paper_features(x)
    assert torch.equal(ours, theirs)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), model.features[0].weight)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), paper_features[0].weight)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=0)


def weighted_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]


def glorot_limit(layer: torch.nn.Module) -> float:
    """Keras glorot_uniform's limit sqrt(6 / (fan_in + fan_out)), fans with the kernel area."""
    receptive = layer.weight[0, 0].numel()
    fan_in, fan_out = layer.weight.shape[1] * receptive, layer.weight.shape[0] * receptive
    return (6 / (fan_in + fan_out)) ** 0.5


def test_paper_cnn_initialises_as_keras_by_default():
    torch.manual_seed(0)
    for model in (PaperCNN(2), build_model({"name": "paper_cnn"}, 2, 257)):
        layers = weighted_layers(model)
        assert len(layers) == 8
        for layer in layers:
            limit = glorot_limit(layer)
            weights = layer.weight.detach()
            assert weights.abs().max() <= limit
            assert torch.count_nonzero(layer.bias) == 0
            if weights.numel() >= 100:  # a uniform(-l, l) sample: s.d. l / sqrt(3)
                assert weights.std().item() == pytest.approx(limit / 3**0.5, rel=0.2)
        # PyTorch's default would be kaiming_uniform(a = sqrt(5)): limit 1 / sqrt(fan_in)
        first = layers[0].weight.detach()
        assert first.abs().max() > 1 / 27**0.5


def test_torch_init_keeps_pytorchs_defaults():
    torch.manual_seed(0)
    model = build_model({"name": "paper_cnn", "init": "torch"}, 2, 257)
    for layer in weighted_layers(model):
        fan_in = layer.weight[0].numel()
        assert layer.weight.abs().max() <= 1 / fan_in**0.5
        assert torch.count_nonzero(layer.bias) > 0


def test_unknown_or_misplaced_init_is_refused():
    with pytest.raises(FewcellsError, match="model.init: unknown initialisation 'he'"):
        PaperCNN(2, init="he")
    with pytest.raises(FewcellsError, match="model.init: 'keras' is for paper_cnn"):
        build_model({"name": "resnet18", "init": "keras"}, 2, 64)
