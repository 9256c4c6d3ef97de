"""
# What the averaged weights and test-time views are worth, on the validation split

`python -m benchmarks.valid_ablation RUN [key=value ...]` scores a run trained with `ema_decay` and
`--valid-split` on its own held-out images (rebuilt from its seed), with {trained, averaged} weights ×
{no flip, flip TTA} × `shift_tta` of 0, 1 and 2 pixels, so that a recipe keeps them on a measurement that
never reads the test set. `key=value` overrides the run's data settings (`data_dir=...`).
"""

import argparse
import sys
from pathlib import Path

from labml import experiment

from experiments import cifar10
from experiments.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint, saved_position, saved_settings
from experiments.launch import quiet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.valid_ablation",
                                description=__doc__.split("\n\n")[-1])  # fmt: skip
    p.add_argument("run", type=Path, help="a run folder trained with ema_decay and --valid-split")
    p.add_argument("settings", nargs="*", metavar="key=value", help="data settings over the run's own")
    args = p.parse_args(argv)
    saved = load_checkpoint(args.run / CHECKPOINT_DIR / LAST)
    if not saved.get("ema"):
        raise SystemExit(f"{args.run} has no averaged weights: train with ema_decay=0.999 to compare them")
    overrides = saved_settings(saved)
    for key, sep, value in (item.partition("=") for item in args.settings):
        if not sep:
            p.error(f"expected key=value, got {key!r}")
        overrides[key] = {"false": False, "true": True}.get(value.lower(), value)
    if not overrides.get("valid_split"):
        raise SystemExit(f"{args.run} has no validation split; this comparison never uses the test set")
    c = cifar10.Configs()
    with quiet():  # labml's public API, without a run folder: the configuration as the trainer computes it
        experiment.evaluate()
        experiment.configs(c, overrides)
        model, loader = c.model.to(c.device), c.valid_loader
    print(f"{args.run}: {loader.images_per_epoch} validation images, step {saved_position(saved)['step']}")
    print("weights    flip TTA  shift TTA  valid loss  valid accuracy")
    for name, weights in (("trained", saved["model"]), ("averaged", saved["ema"]["model"])):
        model.load_state_dict(weights)
        for flip, shift in ((flip, shift) for flip in (False, True) for shift in (0, 1, 2)):
            scores = cifar10.evaluate(model, loader, amp_dtype=None, flip_tta=flip, shift_tta=shift)
            suffix = "_tta" if flip or shift else ""  # the views' average; the first row is the single view
            loss, accuracy = scores[f"loss{suffix}"], scores[f"accuracy{suffix}"]
            flipped = "yes" if flip else "no"
            print(f"{name:<10} {flipped:<9} {shift:<10} {loss:>10.4f}  {accuracy:>14.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
