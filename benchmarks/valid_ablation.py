"""
# What the averaged weights and test-time views are worth, on the validation split

```
python -m benchmarks.valid_ablation logs/cifar10/<uuid> [key=value ...]
```

A run with `ema_decay` and `--valid-split` keeps both the trained and the averaged weights in its
checkpoint. This evaluates every combination of {trained, averaged} weights × {no flip, flip TTA} ×
{no shift, `shift_tta` of 1 and 2 pixels} on the run's own held-out images (the same 5,000 the run
validated on, rebuilt from its seed), so a recipe can decide to keep the average, the flips or the
shifts from a measurement that never looks at the test set. Extra `key=value` settings override the
run's data settings (e.g. `data_dir=...`, `verify_checksums=false` for a copy of CIFAR-10 that is not
the official archive).
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from labml.internal.configs.processor import ConfigProcessor

from experiments import cifar10
from experiments.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint, saved_position, saved_settings

# The `shift_tta` values compared: none, and moves of one and two pixels each way.
SHIFTS = (0, 1, 2)


def main(argv: list[str] | None = None) -> int:
    description = __doc__.split("\n\n")[2]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.valid_ablation", description=description)
    parser.add_argument("run", type=Path, help="a run folder trained with ema_decay and --valid-split")
    parser.add_argument("settings", nargs="*", metavar="key=value", help="data settings over the run's own")
    args = parser.parse_args(argv)
    saved = load_checkpoint(args.run / CHECKPOINT_DIR / LAST)
    if not saved.get("ema"):
        raise SystemExit(f"{args.run} has no averaged weights: train with ema_decay=0.999 to compare them")
    overrides = saved_settings(saved)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected key=value, got {item!r}")
        overrides[key] = {"false": False, "true": True}.get(value.lower(), value)
    if not overrides.get("valid_split"):
        raise SystemExit(f"{args.run} has no validation split; this comparison never uses the test set")
    c = cifar10.Configs()
    ConfigProcessor(c, overrides)
    model, loader = c.model.to(c.device), c.valid_loader
    assert loader is not None  # a valid_split, checked above
    print(f"{args.run}: {loader.images_per_epoch} validation images, step {saved_position(saved)['step']}")
    print("weights    flip TTA  shift TTA  valid loss  valid accuracy")
    for name, weights in (("trained", saved["model"]), ("averaged", saved["ema"]["model"])):
        model.load_state_dict(weights)
        for flip in (False, True):
            for shift in SHIFTS:
                with torch.no_grad():
                    scores = cifar10.evaluate(
                        model, loader, "valid", amp_dtype=None, flip_tta=flip, shift_tta=shift
                    )
                # The views' average where there are several; the first row is the single view.
                suffix = "_tta" if flip or shift else ""
                loss, accuracy = scores[f"loss{suffix}"], scores[f"accuracy{suffix}"]
                flipped = "yes" if flip else "no"
                print(f"{name:<10} {flipped:<9} {shift:<10} {loss:>10.4f}  {accuracy:>14.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
