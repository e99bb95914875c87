"""Relevance maps, nucleus masks and relevance shares (fewcells.explain.relevance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewcells.errors import FewcellsError
from fewcells.explain import masks as cell_masks
from fewcells.explain import relevance as explain
from fewcells.explain.attribution import (
    COMPOSITES,
    canonizers_for,
    describe_composite,
    input_bounds,
    lrp,
    make_composite,
    saliency,
)
from fewcells.training.models import MIN_IMAGE_SIZE, PaperCNN, build_model


def _network(zero_biases: bool) -> PaperCNN:
    """The paper CNN with PyTorch's initialisation (random biases) or with zero biases."""
    torch.manual_seed(0)
    model = PaperCNN(2, image_size=MIN_IMAGE_SIZE, init="torch")
    if zero_biases:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
    return model.eval()


def _input(batch: int = 2) -> torch.Tensor:
    return torch.rand(
        batch, 3, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE, generator=torch.Generator().manual_seed(1)
    )


def test_lrp_epsilon_conserves_the_logit_without_biases():
    model, x, targets = _network(zero_biases=True), _input(), torch.tensor([0, 1])
    relevance, logits = lrp(model, x, targets, make_composite("epsilon", 1e-9))
    assert relevance.shape == (2, 3, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)
    assert np.abs(logits).min() > 1e-4  # a meaningful logit to conserve
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logits, rtol=1e-3)
    expected = model(x).gather(1, targets[:, None])[:, 0].detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5)


def test_lrp_with_biases_absorbs_relevance():
    model, x, targets = _network(zero_biases=False), _input(), torch.tensor([0, 1])
    relevance, logits = lrp(model, x, targets, make_composite("epsilon", 1e-9))
    assert not np.allclose(relevance.sum(axis=(1, 2, 3)), logits, rtol=1e-3)


@pytest.mark.parametrize("name", COMPOSITES)
def test_every_composite_gives_finite_relevance(name):
    relevance, _ = lrp(_network(False), _input(1), torch.tensor([1]), make_composite(name, 1.0))
    assert np.isfinite(relevance).all() and np.abs(relevance).sum() > 0


def _torchvision(arch: str) -> torch.nn.Module:
    """A random torchvision network whose BatchNorm layers have non-trivial statistics."""
    torch.manual_seed(0)
    model = build_model({"name": arch}, 2, 64)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_canonizers_follow_the_architecture():
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    assert canonizers_for(_network(False)) == []
    (resnet,) = canonizers_for(_torchvision("resnet18"))
    assert isinstance(resnet, ResNetCanonizer)
    (efficientnet,) = canonizers_for(_torchvision("efficientnet_b0"))
    assert isinstance(efficientnet, SequentialMergeBatchNorm)


def test_lrp_through_a_canonized_resnet_leaves_the_network_as_it_was():
    model = _torchvision("resnet18")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1])
    with torch.no_grad():
        before = model(x)
    plain, _ = lrp(model, x, targets, make_composite("epsilon_plus_flat"))
    canonized, logits = lrp(
        model,
        x,
        targets,
        make_composite("epsilon_plus_flat", canonizers=canonizers_for(model)),
    )
    assert np.isfinite(canonized).all() and canonized.shape == (2, 3, 64, 64)
    assert not np.allclose(plain, canonized)  # the canonizer changed how relevance flows
    # Merging BatchNorm into the convolutions changes the logits by rounding only.
    chosen = before.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(torch.from_numpy(logits), chosen, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # BatchNorm restored after attribution


def _two_pixel_network() -> torch.nn.Sequential:
    """conv (1 x 2 kernel, weights -1 and 2) -> ReLU -> dense (weight 1), no biases: on the
    pixels (0, 1) the output is 2."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, (1, 2), bias=False),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(1, 1, bias=False),
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[[-1.0, 2.0]]]]))
        model[3].weight.fill_(1.0)
    return model.eval()


def test_box_rule_gives_dark_pixels_relevance_the_epsilon_rule_does_not():
    model, x, target = _two_pixel_network(), torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([0])
    epsilon, logit = lrp(model, x, target, make_composite("epsilon", 1e-9))
    box, _ = lrp(model, x, target, make_composite("epsilon_gamma_box", 1e-9))
    assert logit == pytest.approx([2.0])
    # Epsilon: R_i = x_i w_i R / z, so the black pixel gets nothing.
    np.testing.assert_allclose(epsilon.ravel(), [0.0, 2.0], atol=1e-6)
    # Box rule, bounds [0, 1]: R_i ~ x_i w_i - low w_i+ - high w_i- = (1, 2), normalised to R = 2.
    np.testing.assert_allclose(box.ravel(), [2 / 3, 4 / 3], rtol=1e-5)


def test_box_rule_reaches_the_black_pixels_of_the_paper_cnn():
    x, targets = _input(), torch.tensor([0, 1])
    x[..., ::2] = 0.0  # every other column black: each 3x3 window sees black and bright
    for model in (_network(zero_biases=True), _network(zero_biases=False)):
        epsilon, _ = lrp(model, x, targets, make_composite("epsilon"))
        box, _ = lrp(model, x, targets, make_composite("epsilon_gamma_box"))
        assert np.all(epsilon[..., ::2] == 0) and np.abs(epsilon).sum() > 0
        black_share = np.abs(box[..., ::2]).sum(axis=(1, 2, 3)) / np.abs(box).sum(axis=(1, 2, 3))
        assert (black_share > 0.3).all()


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_box_bounds_are_what_the_first_torchvision_convolution_sees(arch):
    from zennit.types import Convolution

    model = _torchvision(arch)
    first = next(m for m in model.modules() if isinstance(m, Convolution))
    seen = []
    first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    low, high = input_bounds(model)
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
        model(torch.ones(1, 3, 64, 64))
    torch.testing.assert_close(seen[0], low.expand_as(seen[0]))
    torch.testing.assert_close(seen[1], high.expand_as(seen[1]))
    assert input_bounds(_network(False)) == (0.0, 1.0)
    composite = make_composite(
        "epsilon_gamma_box", canonizers=canonizers_for(model), bounds=(low, high)
    )
    relevance, _ = lrp(model, torch.rand(2, 3, 64, 64), torch.tensor([0, 1]), composite)
    assert np.isfinite(relevance).all() and np.abs(relevance).sum() > 0


def test_every_composite_has_a_label_with_its_parameters():
    labels = [describe_composite(name, 0.5, 0.1) for name in COMPOSITES]
    assert len(set(labels)) == len(COMPOSITES)
    assert all("ε = 0.5" in label for label in labels)
    assert "γ = 0.1" in describe_composite("epsilon_gamma_box", 0.5, 0.1)


def test_unknown_composite_is_named():
    with pytest.raises(FewcellsError, match="explain.composite.*'lrp0'"):
        make_composite("lrp0")


def test_saliency_is_a_finite_nonnegative_map_per_image():
    grads = saliency(_network(False), _input(), torch.tensor([0, 1]))
    assert grads.shape == (2, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)
    assert np.isfinite(grads).all() and (grads >= 0).all() and grads.max() > 0


def _synthetic_cell(size: int = 96):
    """A pale field with a pink red cell, a pale blue-grey cytoplasm disc (as in ALL-IDB2)
    and a dark purple off-centre elliptic nucleus; returns the image, nucleus and cell masks."""
    rows, cols = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (225, 220, 215)
    red_cell = (rows - 10) ** 2 + (cols - 12) ** 2 < 10**2
    image[red_cell] = (220, 150, 160)
    cell = (rows - 48) ** 2 + (cols - 48) ** 2 < 30**2
    image[cell] = (195, 190, 215)
    nucleus = ((rows - 44) / 18.0) ** 2 + ((cols - 52) / 13.0) ** 2 < 1
    image[nucleus] = (90, 40, 140)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), nucleus, cell


def test_nucleus_mask_finds_a_known_nucleus():
    image, nucleus, cell = _synthetic_cell()
    found = cell_masks.nucleus_mask(image)
    assert cell_masks.dice(found, nucleus) > 0.9
    assert cell_masks.dice(cell_masks.cell_mask(image, found), cell) > 0.9


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(50, 10.0), np.full(50, 200.0)])
    assert 10 < cell_masks.otsu_threshold(values) < 200


def test_positive_share_on_a_hand_made_map():
    relevance = np.array([[3.0, -5.0], [1.0, 0.0]])
    mask = np.array([[True, True], [False, False]])
    assert cell_masks.positive_share(relevance, mask) == pytest.approx(0.75)  # 3 of 3 + 1
    assert cell_masks.positive_share(relevance, ~mask) == pytest.approx(0.25)
    assert np.isnan(cell_masks.positive_share(-np.abs(relevance), mask))


def test_relevance_summary_averages_over_images_per_composite():
    import pandas as pd

    shares = pd.DataFrame(
        {
            "composite": ["epsilon"] * 4 + ["epsilon_gamma_box"] * 4,
            "size": [10, 10, 10, 50] * 2,
            "share_nucleus_auto": [0.2, 0.4, np.nan, 0.9, 0.6, 0.8, 0.4, 0.1],
            "nucleus_area_auto": [0.1, 0.3, 0.9, 0.2] * 2,
        }
    )
    summary = explain.relevance_summary(shares)
    assert list(summary["composite"]) == ["epsilon"] * 2 + ["epsilon_gamma_box"] * 2
    paper = summary[summary["composite"] == "epsilon"].set_index("size")
    assert paper.loc[10, "mean"] == pytest.approx(0.3)
    assert paper.loc[10, "sd"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert paper.loc[10, "area_mean"] == pytest.approx(0.2)  # of the images with a share
    assert paper.loc[10, "enrichment"] == pytest.approx(1.5)
    assert paper.loc[50, "n_images"] == 1 and np.isnan(paper.loc[50, "sd"])
    box = summary[summary["composite"] == "epsilon_gamma_box"].set_index("size")
    assert box.loc[10, "n_images"] == 3 and box.loc[10, "area_mean"] == pytest.approx(13 / 30)
    assert box.loc[10, "enrichment"] == pytest.approx(0.6 / (13 / 30))
    assert box.loc[50, "enrichment"] == pytest.approx(0.5)  # 0.1 / 0.2
    assert set(summary["region"]) == {"nucleus"} and set(summary["mask"]) == {"auto"}


def test_region_shares_per_mask_source():
    relevance = np.array([[3.0, -5.0], [1.0, 0.0]])
    nucleus = np.array([[True, False], [False, False]])
    cell = np.array([[True, True], [False, False]])
    shares = cell_masks.region_shares(relevance, {"auto": (nucleus, cell), "expert": (cell, cell)})
    assert shares["share_nucleus_auto"] == pytest.approx(0.75)
    assert shares["nucleus_area_auto"] == pytest.approx(0.25)
    assert shares["cell_area_expert"] == pytest.approx(0.5)
    assert len(shares) == 8


def test_expert_mask_colours_and_lookup(tmp_path):
    mask = np.full((4, 4, 3), 255, np.uint8)
    mask[0, 0] = (0, 255, 255)
    mask[1, 1] = (0, 0, 255)
    (tmp_path / "blast").mkdir()
    Image.fromarray(mask).save(tmp_path / "blast" / "b_1.png")
    nucleus, cell = cell_masks.read_expert_mask(cell_masks.find_mask(tmp_path, "blast/b_1"))
    assert nucleus.sum() == 1 and nucleus[0, 0]
    assert cell.sum() == 2 and cell[1, 1]
    with pytest.raises(FewcellsError, match="no expert mask for image 'blast/b_2'"):
        cell_masks.find_mask(tmp_path, "blast/b_2")


def test_fit_mask_pads_and_resizes_like_the_store():
    mask = np.zeros((6, 4), bool)
    mask[2:4, 1:3] = True
    padded = cell_masks.fit_mask(mask, 8, "pad")
    assert padded.shape == (8, 8) and padded.sum() == 4
    resized = cell_masks.fit_mask(mask, 12, "resize")
    assert resized.shape == (12, 12) and resized.dtype == bool


def test_example_cells_default_to_the_first_test_image_per_class():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "image_id": ["b2", "b1", "a1", "t9", "c1"],
            "target": [1, 1, 0, 0, 0],
            "role": ["test", "test", "test", "train", "val"],
        }
    )
    assert list(explain.example_cells(frame, None)["image_id"]) == ["a1", "b1"]
    assert list(explain.example_cells(frame, ["t9", "b2"])["image_id"]) == ["t9", "b2"]
    with pytest.raises(FewcellsError, match=r"explain.cells: image_id\(s\) \['zz'\]"):
        explain.example_cells(frame, ["zz"])


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("explain", {"sizes": [11]}, "experiments.demo_binary.explain.sizes"),
        ("explain", {"folds": [5]}, "experiments.demo_binary.explain.folds"),
        ("explain", {"composite": "lrp0"}, "experiments.demo_binary.explain.composite"),
        (
            "explain",
            {"share_composites": ["epsilon", "lrp0"]},
            "experiments.demo_binary.explain.share_composites",
        ),
        (
            "explain",
            {"share_composites": ["epsilon", "epsilon"]},
            "experiments.demo_binary.explain.share_composites",
        ),
        ("explain", {"share_composites": []}, "experiments.demo_binary.explain.share_composites"),
        ("explain", {"gamma": -0.1}, "experiments.demo_binary.explain.gamma"),
        ("tsne", {"fold": 3}, "experiments.demo_binary.tsne.fold"),
        ("tsne", {"perplexity": 0}, "experiments.demo_binary.tsne.perplexity"),
    ],
)
def test_bad_explain_and_tsne_config_names_the_key(section, value, key):
    import yaml

    from fewcells.config import validate_config

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "config/config.yaml").read_text()
    )
    config["experiments"]["demo_binary"][section] = value
    with pytest.raises(FewcellsError, match=f"config key {key}"):
        validate_config(config)


def test_explain_schema_matches_the_package():
    import yaml

    from fewcells.config import load_schema, validate_config

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "config/config.yaml").read_text()
    )
    config["experiments"]["demo_binary"].pop("explain", None)
    defaults = validate_config(config)["experiments"]["demo_binary"]["explain"]
    for key, value in explain.DEFAULT_SETTINGS.items():
        assert defaults[key] == value, key
    properties = load_schema()["$defs"]["experiment"]["properties"]["explain"]["properties"]
    assert properties["composite"]["enum"] == list(COMPOSITES)
    assert properties["share_composites"]["items"]["enum"] == list(COMPOSITES)


def test_explain_and_tsne_defaults_follow_the_sweep():
    from fewcells.plan import explain_folds, explain_sizes, tsne_fold, tsne_sizes

    experiment = {
        "folds": {"sizes": [50, 10, 20, 30, 40, 60, 100], "run_folds": [3, 4], "k": 10},
        "explain": {"sizes": None, "folds": None},
        "tsne": {"sizes": None, "fold": None},
    }
    assert explain_sizes(experiment) == [10, 30, 50, 100]
    assert tsne_sizes(experiment) == [10, 40, 100]
    assert explain_folds(experiment) == [3] and tsne_fold(experiment) == 3
    experiment["tsne"] = {"sizes": [20, 10], "fold": 4}
    assert tsne_sizes(experiment) == [10, 20] and tsne_fold(experiment) == 4
