"""The torchvision networks of the model registry, weight loading, freezing and keep_blocks."""

import pytest
import torch
import torchvision

from fewcells.errors import FewcellsError
from fewcells.training.models import MIN_IMAGE_SIZE, MODELS, PaperCNN, TorchvisionNet, build_model

EMBED_WIDTH = {
    "paper_cnn": 32,
    "resnet18": 512,
    "densenet121": 1024,
    "efficientnet_b0": 1280,
    "resnext50_32x4d": 2048,
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def size_for(name: str) -> int:
    return MIN_IMAGE_SIZE if name == "paper_cnn" else 64


def test_the_registry_lists_the_documented_networks():
    assert set(MODELS) == set(EMBED_WIDTH)


@pytest.mark.parametrize("name", sorted(EMBED_WIDTH))
def test_every_network_maps_images_to_logits_through_its_embedding(name):
    torch.manual_seed(0)
    size = size_for(name)
    model = build_model({"name": name}, n_classes=3, image_size=size).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        embedding = model.embed(x)
    assert logits.shape == (2, 3)
    assert embedding.shape == (2, EMBED_WIDTH[name])
    assert model.classifier.in_features == EMBED_WIDTH[name]
    torch.testing.assert_close(model.classifier(embedding), logits)


def test_imagenet_normalisation_happens_inside_the_network():
    model = TorchvisionNet("resnet18", 2, image_size=64)
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    seen = {}
    model.backbone.conv1.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model.eval()(torch.full((1, 3, 64, 64), 0.485))
    assert seen["x"][0, 0].abs().max() < 1e-6  # red channel: (0.485 - mean) / std == 0
    assert seen["x"][0, 1].mean() > 0.1 and seen["x"][0, 2].mean() > 0.3


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0"])
def test_too_small_images_name_image_size(name):
    with pytest.raises(FewcellsError, match=f"image.size 31 .*{name}"):
        build_model({"name": name}, n_classes=2, image_size=31)
    build_model({"name": name}, n_classes=2, image_size=32)


def params_equal(a: torch.nn.Module, b: torch.nn.Module, skip: str = "classifier.") -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


def test_a_torchvision_state_dict_loads_into_the_backbone_without_its_head(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    fresh = build_model({"name": "resnet18"}, n_classes=2, image_size=64)
    loaded = build_model({"name": "resnet18", "weights": str(path)}, n_classes=2, image_size=64)
    assert torch.equal(loaded.backbone.conv1.weight, reference.conv1.weight)
    assert not torch.equal(fresh.backbone.conv1.weight, reference.conv1.weight)
    for key, value in loaded.backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key
    assert loaded.classifier.out_features == 2  # the 1000-class head was left out


def test_keep_blocks_loads_the_lower_stages_of_a_full_state_dict(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(reference.state_dict(), path)
    cfg = {"name": "resnet18", "weights": str(path), "keep_blocks": 2}
    model = build_model(cfg, n_classes=2, image_size=64)
    assert torch.equal(model.backbone.layer2[0].conv1.weight, reference.layer2[0].conv1.weight)
    assert not hasattr(model.backbone, "layer3")


@pytest.mark.parametrize("name", ["paper_cnn", "efficientnet_b0"])
def test_a_saved_network_loads_into_a_fresh_one(tmp_path, name):
    size = size_for(name)
    torch.manual_seed(3)
    source = build_model({"name": name}, n_classes=2, image_size=size)
    path = tmp_path / "net.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    same = build_model({"name": name, "weights": str(path)}, n_classes=2, image_size=size)
    assert params_equal(source, same, skip="\0")  # the head too: same shape
    other = build_model({"name": name, "weights": str(path)}, n_classes=5, image_size=size)
    assert params_equal(source, other)
    assert not torch.equal(other.classifier.weight[:2], source.classifier.weight)


def test_a_fewcells_checkpoint_loads(tmp_path):
    torch.manual_seed(5)
    source = build_model({"name": "densenet121"}, n_classes=3, image_size=64)
    state = {"model." + k: v for k, v in source.state_dict().items()}
    state["augment.some_buffer"] = torch.zeros(1)
    path = tmp_path / "model.ckpt"
    torch.save({"epoch": 3, "state_dict": state, "hyper_parameters": {"n_classes": 3}}, path)
    loaded = build_model({"name": "densenet121", "weights": str(path)}, 3, 64)
    assert params_equal(source, loaded, skip="\0")


def test_a_paper_cnn_checkpoint_loads(tmp_path):
    source = PaperCNN(2, image_size=257)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in source.state_dict().items()}}, path)
    loaded = build_model({"name": "paper_cnn", "weights": str(path)}, 2, 257)
    assert params_equal(source, loaded, skip="\0")


def test_a_missing_weights_file_is_named(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FewcellsError, match="nowhere.pth: no such file"):
        build_model({"name": "resnet18", "weights": str(path)}, 2, 64)


def test_random_bytes_are_not_weights(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FewcellsError, match="garbage.pth: cannot read"):
        build_model({"name": "resnet18", "weights": str(path)}, 2, 64)


def test_a_non_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(FewcellsError, match="list.pt: not a state_dict"):
        build_model({"name": "resnet18", "weights": str(path)}, 2, 64)


def test_another_architecture_does_not_fit(tmp_path):
    path = tmp_path / "densenet.pth"
    torch.save(torchvision.models.efficientnet_b0(weights=None).state_dict(), path)
    with pytest.raises(FewcellsError, match=r"densenet.pth: does not fit .*resnet18.*\d+ missing"):
        build_model({"name": "resnet18", "weights": str(path)}, 2, 64)
    paper = tmp_path / "paper.pt"
    torch.save(PaperCNN(2, image_size=257).state_dict(), paper)
    with pytest.raises(FewcellsError, match=r"paper.pt: does not fit PaperCNN: .*mis-shaped"):
        build_model({"name": "paper_cnn", "weights": str(paper)}, 2, 400)


def one_step(model: torch.nn.Module, size: int) -> None:
    torch.manual_seed(6)
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x, y = torch.rand(2, 3, size, size), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimiser.step()


@pytest.mark.parametrize(("name", "k"), [("paper_cnn", 2), ("resnet18", 2), ("efficientnet_b0", 3)])
def test_freezing_keeps_the_lower_stages_fixed(name, k):
    size = size_for(name)
    torch.manual_seed(7)
    model = build_model({"name": name, "freeze": k}, n_classes=2, image_size=size)
    frozen = torch.nn.ModuleList(model.stages()[:k])
    assert not any(p.requires_grad for p in frozen.parameters())
    before = {n: t.clone() for n, t in model.state_dict().items()}
    frozen_names = {n for n, _ in model.named_parameters() if not _.requires_grad}
    one_step(model, size)
    after = model.state_dict()
    for name_, param in model.named_parameters():
        if name_ in frozen_names:
            assert param.grad is None or not param.grad.any(), name_
            assert torch.equal(param, before[name_]), name_
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])
    unfrozen = [n for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n]
    assert any(not torch.equal(after[n], before[n]) for n in unfrozen)
    # BatchNorm running statistics of the frozen stages do not move in train() mode
    frozen_ids = {id(b) for b in frozen.buffers()}
    stats = [n for n, _ in model.named_buffers() if n.endswith("running_mean")]
    moved = {n for n in stats if not torch.equal(after[n], before[n])}
    frozen_stats = {n for n, b in model.named_buffers() if id(b) in frozen_ids} & set(stats)
    assert not moved & frozen_stats
    if name != "paper_cnn":
        assert frozen_stats and moved  # the higher stages' statistics do move


def test_freeze_zero_trains_everything_and_out_of_range_is_refused():
    model = build_model({"name": "resnet18", "freeze": 0}, 2, 64)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(FewcellsError, match="model.freeze.*0..4"):
        build_model({"name": "resnet18", "freeze": 5}, 2, 64)


def test_frozen_batchnorm_stays_in_eval_after_train():
    model = build_model({"name": "densenet121", "freeze": 1}, 2, 64)
    model.eval()
    model.train()
    assert not model.backbone.features.norm0.training
    assert model.backbone.features.denseblock2.denselayer1.norm1.training
    model.eval()
    assert not model.backbone.features.denseblock2.denselayer1.norm1.training


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "densenet121", "efficientnet_b0"])
def test_keep_blocks_gives_a_smaller_network_with_the_same_classes(name):
    full = build_model({"name": name}, n_classes=4, image_size=64)
    small = build_model({"name": name, "keep_blocks": 2}, n_classes=4, image_size=64)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) < n(full) / 2
    assert small(torch.rand(2, 3, 64, 64)).shape == (2, 4)
    assert len(small.stages()) == 2


def test_keep_blocks_out_of_range_and_for_paper_cnn_are_refused():
    with pytest.raises(FewcellsError, match="keep_blocks"):
        build_model({"name": "resnet18", "keep_blocks": 5}, 2, 64)
    with pytest.raises(FewcellsError, match="keep_blocks"):
        build_model({"name": "paper_cnn", "keep_blocks": 2}, 2, 257)


def test_paper_cnn_state_dict_keys_are_unchanged():
    model = build_model({"name": "paper_cnn"}, n_classes=2, image_size=257)
    keys = [f"features.{3 * i}.{p}" for i in range(6) for p in ("weight", "bias")]
    keys += ["hidden.weight", "hidden.bias", "classifier.weight", "classifier.bias"]
    assert list(model.state_dict()) == keys
    assert sum(p.numel() for p in model.parameters()) == 7_210
    assert sum(p.numel() for p in build_model({"name": "paper_cnn"}, 6, 257).parameters()) == 7_342


def test_the_config_schema_knows_the_model_keys():
    import copy
    from pathlib import Path

    import yaml

    from fewcells.config import validate_config

    demo = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/config.yaml").read_text())
    name = next(iter(demo["experiments"]))
    model = validate_config(demo)["experiments"][name]["model"]
    assert model == {
        "name": "paper_cnn",
        "hidden": 32,
        "weights": None,
        "freeze": 0,
        "keep_blocks": None,
        "init": None,
        "pretrained": None,
    }
    config = copy.deepcopy(demo)
    config["experiments"][name]["model"] = {"name": "resnet18", "weights": "w.pth", "freeze": 2}
    assert validate_config(config)["experiments"][name]["model"]["keep_blocks"] is None
    for bad in ({"name": "vgg16"}, {"freeze": -1}, {"keep_blocks": 0}, {"pretrained": True}):
        config["experiments"][name]["model"] = bad
        with pytest.raises(FewcellsError, match="model"):
            validate_config(config)


def test_a_trained_job_checkpoint_loads_and_a_frozen_resnet_trains(tmp_path):
    """A real Lightning model.ckpt from run_training loads as weights; resnet18 trains too."""
    from test_train import IMAGE_SIZE, make_store

    from fewcells.training.run import run_training

    dataset = make_store(tmp_path / "data")
    train_cfg = {"max_epochs": 1, "patience": 5}
    paper = {"name": "paper_cnn", "hidden": 32}
    run_training(*dataset, 0, 8, train_cfg, paper, tmp_path / "paper", image_size=IMAGE_SIZE)
    ckpt = tmp_path / "paper" / "model.ckpt"
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    model = build_model({**paper, "weights": str(ckpt)}, n_classes=2, image_size=IMAGE_SIZE)
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained["model." + key]), key
    resnet = {"name": "resnet18", "freeze": 1, "keep_blocks": 2}
    info = run_training(*dataset, 0, 8, train_cfg, resnet, tmp_path / "r18", image_size=IMAGE_SIZE)
    assert info["n_parameters"] < 1_000_000
