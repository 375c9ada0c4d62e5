"""Contract test: every registry entry builds, runs forward and backward, for the shapes it
supports; plus import-path builders and argument errors."""

import sys

import pytest
import torch

from kdistill.models import MODELS, build_model, builder_args

IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]


def shapes_for(name):
    if name == "alexnet_bn":
        return [(3, 67, 67)]  # a 12x12 stride-4 stem and three pools: ImageNet-sized inputs
    if name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2"):
        return [(1, 28, 28), (3, 32, 32)]  # the ImageNet stem needs more than 8x8 pixels
    return IMAGE_SHAPES


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_trains_a_step(name):
    for shape in shapes_for(name):  # the digits' 8x8 too, where a model claims to take it
        model = build_model(name, 7, shape, {})
        x = torch.randn(2, *shape)
        out = model.train()(x)
        assert out.shape == (2, 7)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_small_input_stems():
    plain = build_model("resnet18", 10, (1, 28, 28), {})
    small = build_model("resnet18", 10, (1, 28, 28), {"small_input": True})
    assert plain.conv1.stride == (2, 2) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    mobile = build_model("mobilenet_v2", 10, (1, 32, 32), {"small_input": True})
    assert mobile.features[0][0].stride == (1, 1) and mobile.features[0][0].in_channels == 1


def test_mlp_arguments_and_vectors():
    model = build_model("mlp", 3, (13,), {"hidden": [5, 4], "dropout": 0.1})
    assert model(torch.randn(2, 13)).shape == (2, 3)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(13, 5), (5, 4), (4, 3)]
    assert builder_args(MODELS["mlp"]) == {
        "hidden": (800, 800),
        "dropout": 0.0,
        "input_dropout": 0.0,
    }


def test_cifar_resnet_depths():
    params = [
        sum(p.numel() for p in build_model(f"resnet{d}_cifar", 10, (3, 32, 32)).parameters())
        for d in (20, 56)
    ]
    assert 0.26e6 < params[0] < 0.28e6 and 0.84e6 < params[1] < 0.87e6  # He et al.: 0.27M / 0.85M


@pytest.mark.parametrize(
    ("arch", "args", "shape", "message"),
    [
        ("resnet9000", {}, (1, 8, 8), "unknown model 'resnet9000'; choose one of mlp"),
        (
            "mlp",
            {"width": 3},
            (1, 8, 8),
            "no argument.*width.*valid: hidden, dropout, input_dropout",
        ),
        ("lenet5", {}, (5,), "needs image inputs"),
        ("mlp", {"dropout": 1.5}, (1, 8, 8), "dropout must be in"),
        ("nosuchmodule:build", {}, (1, 8, 8), "cannot import module"),
        ("os:sep", {}, (1, 8, 8), "has no callable"),
        ("mlp", {}, (1, 8, 9), "must be square"),
    ],
)
def test_errors(arch, args, shape, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, 10, shape, args)


def test_import_path_builder(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def tiny(num_classes, in_channels, width=3):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(width), torch.nn.Linear(width, num_classes))\n"
        "def not_a_model(num_classes):\n"
        "    return 'model'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_models:tiny", 4, (1, 8, 8), {"width": 6})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="not an nn.Module"):
        build_model("my_models:not_a_model", 4, (1, 8, 8))
    sys.modules.pop("my_models", None)


@pytest.mark.parametrize(
    ("arch", "shape", "names"),
    [
        # a few of the tensor names Distiller's own model files hold (its models/ package)
        ("resnet20_cifar", (3, 32, 32),
         ["layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "fc.weight"]),
        ("preact_resnet20_cifar", (3, 32, 32),
         ["layer1.0.pre_bn.weight", "layer1.0.bn.weight", "layer2.0.downsample.weight",
          "final_bn.running_mean"]),
        ("plain20_cifar", (3, 32, 32), ["layer3.2.bn2.weight", "bn1.weight", "fc.bias"]),
        ("vgg16_cifar", (3, 32, 32), ["features.0.weight", "features.28.bias", "classifier.weight"]),
        ("preact_resnet18", (3, 64, 64),
         ["layer1.0.bn1_2.weight", "layer2.0.pre_bn.weight", "layer2.0.downsample.0.weight",
          "final_bn.weight"]),
        ("mobilenet_050", (3, 64, 64), ["model.0.0.weight", "model.1.3.weight", "model.13.4.bias"]),
        ("alexnet_bn", (3, 67, 67),
         ["features.0.bias", "features.3.running_var", "classifier.1.weight", "classifier.6.bias"]),
    ],
)  # fmt: skip
def test_distillers_models_have_its_parameter_names(arch, shape, names):
    keys = set(build_model(arch, 10, shape, {}).state_dict())
    assert set(names) <= keys, sorted(set(names) - keys)


def test_earlier_cifar_resnet_files_load_under_the_new_names():
    """Before the projection shortcut took Distiller's name, kdistill called it shortcut."""
    for arch, old in (
        ("resnet20_cifar", {"downsample": "shortcut"}),
        ("preact_resnet20_cifar", {"downsample": "shortcut", "pre_bn": "bn1", "bn": "bn2"}),
    ):
        model = build_model(arch, 10, (3, 32, 32), {})
        earlier = {}
        for key, value in model.state_dict().items():
            parts = key.split(".")
            if parts[0] == "final_bn":
                parts[0] = "bn_final"
            elif parts[0].startswith("layer") and parts[2] in old:
                parts[2] = old[parts[2]]
            earlier[".".join(parts)] = value
        assert set(earlier) != set(model.state_dict())
        fresh = build_model(arch, 10, (3, 32, 32), {})
        fresh.load_state_dict(earlier)
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                     model.state_dict().values()))  # fmt: skip
