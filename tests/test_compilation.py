"""Models survive TorchScript, torch.export, torch.compile, channels_last, pickling and state dicts."""

import io
import pickle

import pytest
import torch

import resnet


def small_models():
    torch.manual_seed(0)
    return {
        "option A": resnet.ResNetClassifier(resnet.ResNetBase([1, 1], [4, 8], stem="cifar",
                                                              first_kernel_size=3, shortcut="A"), 3),
        "bottleneck B": resnet.ResNetClassifier(resnet.ResNetBase([1, 1], [8, 16], [2, 4], shortcut="B",
                                                                  stem="imagenet"), 3),
        "plain": resnet.ResNetClassifier(resnet.ResNetBase([1, 1], [4, 8], shortcut="none"), 3),
        "option C": resnet.ResNetClassifier(resnet.ResNetBase([1, 1], [4, 8], shortcut="C"), 3),
    }


MODELS = small_models()


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_matches_eager(name):
    model = MODELS[name].eval()
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
    model = MODELS[name].eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


def test_torch_compile_fullgraph_matches_eager():
    model = MODELS["option A"].eval()
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
    model = MODELS[name].eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    fast = pickle.loads(pickle.dumps(model)).to(memory_format=torch.channels_last)
    assert torch.allclose(fast(x.to(memory_format=torch.channels_last)), expected, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_pickle_and_state_dict_round_trips(name):
    model = MODELS[name].eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = small_models()[name].eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert torch.equal(fresh(x), model(x))


def test_torch_compile_default_backend_matches_eager():
    # The default (inductor) backend generates and compiles C++ for the CPU: slow to build (~30 s), so
    # one small model in eval mode stands for all.
    model = MODELS["option A"].eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
