"""
Models survive TorchScript, torch.export, torch.compile, channels_last, pickling and state dicts: small
networks covering every shortcut option and both block types, and the presets themselves (one CIFAR,
one ImageNet). Every test builds its own models, so none depends on what another test did to them.
"""

import io
import pickle
import warnings

import pytest
import torch

import resnet

SMALL_MODELS = {
    "option A": lambda: resnet.ResNetClassifier(
        resnet.ResNetBase([1, 1], [4, 8], stem="cifar", first_kernel_size=3, shortcut="A"), 3
    ),
    "bottleneck B": lambda: resnet.ResNetClassifier(
        resnet.ResNetBase([1, 1], [8, 16], [2, 4], shortcut="B", stem="imagenet"), 3
    ),
    "plain": lambda: resnet.ResNetClassifier(resnet.ResNetBase([1, 1], [4, 8], shortcut="none"), 3),
    "option C": lambda: resnet.ResNetClassifier(resnet.ResNetBase([1, 1], [4, 8], shortcut="C"), 3),
}
MODELS = list(SMALL_MODELS)


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A fresh small model in eval mode; the same `seed` gives the same weights."""
    torch.manual_seed(seed)
    return SMALL_MODELS[name]().eval()


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_eager(name):
    model = build(name)
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(scripted(x), model(x), atol=1e-6)
    # The input checks survive scripting too.
    with pytest.raises(Exception, match="input channels"):
        scripted(torch.randn(2, 1, 32, 32))


def test_scripting_a_parameter_free_module_works():
    shortcut = resnet.ZeroPadShortcut(2, 4, 2)
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(torch.jit.script(shortcut)(x), shortcut(x))
    assert shortcut.device is None


@pytest.mark.parametrize("name", MODELS)
def test_torch_export_matches_eager(name):
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


def test_torch_compile_fullgraph_matches_eager():
    model = build("option A")
    x = torch.randn(2, 3, 32, 32)
    # aot_eager traces the whole graph like the default backend, without waiting for a C++ compiler.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), model(x), atol=1e-6)
    model.train()
    compiled_train = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled_train(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_gives_the_same_outputs(name):
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fast = pickle.loads(pickle.dumps(model)).to(memory_format=torch.channels_last)
    assert torch.allclose(fast(x.to(memory_format=torch.channels_last)), expected, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_pickle_and_state_dict_round_trips(name):
    model = build(name, seed=0)
    # Batch-norm statistics of its own, so the buffers must travel as well as the weights.
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32) * 3 + 1)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(name, seed=1)
    assert not torch.allclose(fresh(x), model(x)), "the fresh model must start out computing something else"
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert torch.equal(fresh(x), model(x))


# One CIFAR and one ImageNet preset, the networks people actually deploy; the ImageNet one at 64x64, which
# its stem and stages handle like 224x224 at a fraction of the cost.
PRESETS = {"resnet20": (resnet.resnet20, 32), "resnet18": (resnet.resnet18, 64)}


@pytest.mark.parametrize("name", PRESETS)
def test_presets_script_export_and_compile_to_the_same_outputs(name):
    builder, size = PRESETS[name]
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(2, 3, size, size)
    expected = model(x)
    assert torch.allclose(torch.jit.script(model)(x), expected, atol=1e-5)
    assert torch.allclose(torch.export.export(model, (x,)).module()(x), expected, atol=1e-5)
    # Compiled for inference, as a deployed preset is: tracing the backward pass too would cost resnet18
    # minutes of AOT tracing here, and the small models above already compile in training mode.
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(x), expected, atol=1e-5)


def test_torch_compile_default_backend_matches_eager():
    # The default (inductor) backend generates and compiles C++ for the CPU: slow to build (~30 s), so
    # one small model in eval mode stands for all.
    model = build("option A")
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet20", "resnet9"])
def test_tracing_raises_no_tracer_warning_from_the_input_checks(name):
    torch.manual_seed(0)
    model = resnet.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (x,))
    other = torch.randn(5, 3, 32, 32)
    assert torch.allclose(traced(other), model(other), atol=1e-5)


def test_the_legacy_onnx_exporter_raises_no_tracer_warning_with_a_dynamic_batch():
    pytest.importorskip("onnx")
    model = resnet.resnet20().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (torch.randn(2, 3, 32, 32),),
            io.BytesIO(),
            dynamo=False,
            input_names=["images"],
            dynamic_axes={"images": {0: "batch"}},
        )


def test_compiled_model_keeps_the_dtype_check_and_autocast():
    model = build("option A")
    x = torch.randn(2, 3, 32, 32)
    # Without fullgraph, as most people compile: dynamo hands the refusal over to Python as it is (with
    # fullgraph it would wrap it in its own "Unsupported" error, message included).
    with pytest.raises(TypeError, match="dtype torch.float32.*got torch.float64"):
        torch.compile(model, backend="aot_eager")(x.double())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert compiled(x).dtype == torch.bfloat16
