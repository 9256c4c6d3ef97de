"""
# int8 inference on the CPU

A trained network does not need 32-bit floats to classify an image. Storing every weight and every
activation as an 8-bit integer, with one float scale (and zero point) per tensor or per output channel
to map the integers back to the real values they stand for, cuts the memory traffic by four and lets the
CPU's integer vector units (VNNI and AMX on x86) do four times as many multiply-adds per instruction.
The price is rounding: each value snaps to one of 256 levels, and the network's accuracy drops by
however much those small errors move its decisions.

The scales must cover the values each tensor actually takes. For the weights they can be read off the
weights. For the activations they depend on the images, so a few hundred training images go through
the network first while observers record each activation's range: this is the *calibration* set.

## Why PyTorch 2's export-based quantisation

PyTorch's older, eager-mode quantisation swaps modules for quantised ones, and cannot see a plain
`residual + shortcut(x)`: every residual block would need its add rewritten as a special module. The
export-based flow (PT2E) works on the graph `torch.export` captures, where the add is just another
node. The X86 Inductor quantizer then knows the patterns a ResNet is made of: it folds each batch norm
into its convolution, quantises convolution weights per output channel, and fuses a block's
`conv → BN → + shortcut → ReLU` into one int8 convolution with the add and the ReLU inside. The steps
are:

1. `torch.export` captures the network in eval mode (batch norm uses its running statistics);
2. `prepare_pt2e` inserts observers where the quantizer asks for them;
3. the calibration images run through, and the observers learn each activation's range;
4. `convert_pt2e` replaces the observers by quantise / dequantise pairs: a reference model that still
   computes in float, but on values rounded exactly as int8 would round them;
5. lowering replaces each quantise → float convolution → dequantise pattern by one oneDNN int8 kernel.

The quantizer and the lowering live in `torchao` (the `[int8]` extra); this module only strings the
steps together and makes the result easy to call. PyTorch's tutorial lowers with
`torch.compile(reference, options={"freezing": True})` instead, which generates C++ for the whole
graph; with torch 2.14 and torchao 0.18 that failed for us inside the compiler (on
`onednn.qconv_prepack`), while torchao's `lower_pt2e_quantized_to_x86` applies the same int8 pattern
rewrites and runs straight away, without a compiler.
"""

from collections.abc import Iterable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from resnet.checks import check_image_batch, check_positive


def _torchao() -> SimpleNamespace:
    """The four torchao functions the steps need, or one line saying how to install them."""
    try:
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except ImportError as error:
        raise ImportError(
            f"int8 quantisation needs torchao ({error}); install it with pip install 'resnet-annotated[int8]'"
        ) from None
    return SimpleNamespace(
        prepare=prepare_pt2e,
        convert=convert_pt2e,
        lower=lower_pt2e_quantized_to_x86,
        x86=x86_inductor_quantizer,
    )


def calibrate_int8(model: nn.Module, calibration: Iterable[torch.Tensor]) -> torch.fx.GraphModule:
    """
    ## Steps 1 to 4: the reference int8 model

    * `model` is a trained network; it is put in eval mode and not changed
    * `calibration` gives float batches `[batch, channels, height, width]`, normalised exactly as the
      network's training images were; a few hundred images are enough

    Returns the quantise / dequantise reference model. It takes any batch size, but only the image size
    it was calibrated with, and computes in float: correct, not fast. [`lower_int8`](#lower_int8) makes
    it fast.
    """
    torchao = _torchao()
    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("calibrate_int8 needs at least one calibration batch, got none")
    model.eval()
    # The batch dimension stays symbolic, so calibration batches (and the reference model) may differ in size.
    batch = torch.export.Dim("batch")
    captured = torch.export.export(model, (first,), dynamic_shapes=({0: batch},)).module()
    x86 = torchao.x86
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    observed = torchao.prepare(captured, quantizer)
    with torch.no_grad():
        for images in (first, *batches):
            observed(images)
    reference: torch.fx.GraphModule = torchao.convert(observed)
    return reference


class Int8Network(nn.Module):
    """
    ## The int8 network

    A network lowered to oneDNN's int8 kernels. The lowering fixes the batch size along with everything
    else, so this module cuts any batch into pieces of `batch_size` images, pads the last piece with
    zeros and drops their outputs again: in eval mode every image's output depends on that image alone,
    so the padding changes nothing but the time. It checks its input like the float network does.
    """

    def __init__(
        self, lowered: torch.fx.GraphModule, batch_size: int, image_size: tuple[int, int, int], min_size: int
    ):
        super().__init__()
        self.lowered = lowered
        self.batch_size = batch_size
        self.image_size = image_size
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, self.image_size[0], self.min_size, torch.float32)
        if tuple(x.shape[1:]) != self.image_size:
            channels, height, width = self.image_size
            raise ValueError(
                f"this int8 network was built for {height}x{width} images (its calibration images), got "
                f"shape {list(x.shape)}; resize the images, or quantise again with calibration images "
                f"of this size"
            )
        outputs = []
        with torch.no_grad():
            for piece in torch.split(x, self.batch_size):
                missing = self.batch_size - piece.shape[0]
                # `F.pad` reads its widths from the last dimension backwards; the batch is the fourth.
                padded = F.pad(piece, (0, 0, 0, 0, 0, 0, 0, missing)) if missing else piece
                outputs.append(self.lowered(padded)[: piece.shape[0]])
        return torch.cat(outputs)


def lower_int8(
    reference: torch.fx.GraphModule, batch_size: int, image_size: tuple[int, int, int], *, min_size: int = 1
) -> Int8Network:
    """
    ## Step 5: int8 kernels

    * `reference` is what [`calibrate_int8`](#calibrate_int8) returned
    * `batch_size` is the batch the kernels are built for; larger batches run in pieces
    * `image_size` is `(channels, height, width)` of the calibration images
    * `min_size` is the network's downsampling (`total_stride`), for the input check
    """
    check_positive(batch_size=batch_size)
    example = torch.zeros(batch_size, *image_size)
    lowered: torch.fx.GraphModule = _torchao().lower(reference, (example,))
    return Int8Network(lowered, batch_size, image_size, min_size)


def quantize_int8(
    model: nn.Module, calibration: Iterable[torch.Tensor], *, batch_size: int = 256
) -> Int8Network:
    """
    ## All five steps

    `model` (a `ResNetClassifier` or `ResNet9`, trained) to its int8 version, calibrated on the float
    batches of `calibration`, with int8 kernels for batches of `batch_size`:

    ```python
    int8 = resnet.quantize_int8(model, [normalize_cifar10(train_images[:512])])
    logits = int8(batch)
    ```
    """
    batches = list(calibration)
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch, got none")
    reference = calibrate_int8(model, batches)
    # The last map's reduction is how far the network downsamples: the smallest image it takes.
    feature_info = getattr(model, "feature_info", None)
    min_size = feature_info()[-1].reduction if callable(feature_info) else 1
    image_size = (batches[0].shape[1], batches[0].shape[2], batches[0].shape[3])
    return lower_int8(reference, batch_size, image_size, min_size=min_size)
