"""Released PyTorch checkpoints -> this project's torch names: DAC-DETR, DINO, Deformable-DETR; torchvision ResNets.

The releases store their model under the checkpoint's `model` entry with these differences from torch_impl:

- all three: the backbone is `backbone.0.body.*` (here `backbone.body.*`); with box refinement the heads are
  registered twice, `transformer.decoder.class_embed.N` / `transformer.decoder.bbox_embed.N` being the same
  tensors as the top-level `class_embed.N` / `bbox_embed.N` (checked equal, then dropped); DDP-saved files
  may prefix every key with `module.`.
- DAC-DETR (github.com/huzhengdongcs/DAC-DETR): otherwise identical (576 distinct tensors for R50 cdn_ice).
- Deformable-DETR (github.com/fundamentalvision/Deformable-DETR), two-stage + box refinement: no `label_enc`
  (no denoising) and no `query_embed` (no mixed selection): this project's deformable_detr config with
  `-o model.mixed_selection=false model.num_queries=300 model.dim_feedforward=1024` (the paper's settings).
- DINO (github.com/IDEA-Research/DINO): the proposal heads are `transformer.enc_out_class_embed` /
  `transformer.enc_out_bbox_embed` (here the last entry of `class_embed` / `bbox_embed`) and the learned content
  queries `transformer.tgt_embed` (here `query_embed`); these are renamed. DINO also has
  `transformer.decoder.ref_point_head` (query positions recomputed from the boxes at every layer) and
  `transformer.decoder.norm`, which this project's model does not have, and lacks `transformer.pos_trans*`,
  which it has: such a checkpoint is refused with those keys named, and `skip` patterns load the rest (a
  starting point for fine-tuning, not DINO's function).

Keys that are not the model's, model keys the file lacks and shape mismatches stop the import with their
names, unless a `skip` pattern (shell-style, e.g. 'class_embed.*') matches them: skipped model keys keep the
model's fresh initialization, skipped file keys are dropped.
"""
import fnmatch
import re
from typing import Dict, Iterable, List, Tuple

import numpy as np

from convert.rules import TORCH_ONLY_SUFFIX, ConversionError

ALIASES = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")

# What keys of other releases are, for the refusal message.
FOREIGN = {
    "transformer.decoder.ref_point_head.*": "DINO's per-layer query-position MLP (here: transformer.pos_trans, "
                                            "applied once to the selected proposals)",
    "transformer.decoder.norm.*": "DINO's LayerNorm after the decoder (none here)",
    "transformer.pos_trans*": "the two-stage query-position projection (DINO has none)",
    "transformer.reference_points.*": "one-stage Deformable-DETR reference points (use -o model.two_stage=false)",
    "label_enc.*": "the denoising label embedding (Deformable-DETR has none: use a config with dn off)",
    "query_embed.*": "learned queries (two-stage Deformable-DETR has none: -o model.mixed_selection=false)",
    "transformer.two_stage_wh_embedding.*": "a DINO variant's learned proposal size (none here)",
    "transformer.pat_embed_for_2stage": "a DINO variant's pattern embedding (none here)",
    "refpoint_embed.*": "learned reference boxes (none here)",
    "fc.*": "an ImageNet classifier",
}


def _describe(name: str) -> str:
    for pattern, what in FOREIGN.items():
        if fnmatch.fnmatchcase(name, pattern):
            return f"{name} ({what})"
    return name


def release_to_torch_names(state: Dict[str, np.ndarray], num_decoder_layers: int) -> Tuple[Dict[str, np.ndarray],
                                                                                            List[str]]:
    """A release's `model` state dict -> the same tensors under torch_impl's names, and notes on what was done.

    The proposal heads of DINO go to index `num_decoder_layers` of class_embed / bbox_embed. Raises
    ConversionError when an alias differs from the tensor it should repeat.
    """
    notes = []
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the 'module.' prefix of a DDP-saved model")
    out, aliases = {}, {}
    renames = [("backbone.0.body.", "backbone.body."), ("transformer.tgt_embed.", "query_embed."),
               ("transformer.enc_out_class_embed.", f"class_embed.{num_decoder_layers}."),
               ("transformer.enc_out_bbox_embed.", f"bbox_embed.{num_decoder_layers}.")]
    for name, value in state.items():
        if name.startswith(ALIASES):
            aliases[name] = value
            continue
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        if name in out:
            raise ConversionError(f"two entries of the file map to {name}")
        out[name] = value
    differ = []
    for name, value in aliases.items():
        top = name[len("transformer.decoder."):]
        if top not in out:  # only registered under the decoder: keep it under the top-level name
            out[top] = value
        elif out[top].shape != value.shape or not np.array_equal(out[top], value):
            differ.append(f"{name} vs {top}")
    if differ:
        raise ConversionError(f"{len(differ)} transformer.decoder.* head entries differ from the top-level heads "
                              f"they should alias (a corrupt or edited file?): {differ[:5]}")
    if aliases:
        notes.append(f"dropped {len(aliases)} transformer.decoder.class_embed/bbox_embed aliases (checked equal to "
                     "the top-level heads)")
    renamed = [f"{old}* -> {new}*" for old, new in renames if any(k.startswith(old) for k in state)]
    if renamed:
        notes.append("renamed " + ", ".join(renamed))
    return out, notes


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def fit_to_model(arrays: Dict[str, np.ndarray], spec: Dict[str, tuple], init: Dict[str, np.ndarray],
                 skip: Iterable[str] = ()) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Strict match of torch-named `arrays` against the model's `spec`, except for keys matching `skip`.

    init: the model's own (freshly initialized) state dict, used for skipped model keys. Counters
    (num_batches_tracked) the model does not have are dropped; those it has and the file lacks start at 0.
    -> (the complete state dict for the model, notes). ConversionError lists every key that stops the import.
    """
    skip = list(skip)
    notes = []
    counters = [k for k in arrays if k.endswith(TORCH_ONLY_SUFFIX) and k not in spec]
    arrays = {k: v for k, v in arrays.items() if k not in counters}
    if counters:
        notes.append(f"dropped {len(counters)} BatchNorm num_batches_tracked counters (the model has none)")
    unexpected = sorted(k for k in arrays if k not in spec)
    missing = sorted(k for k in spec if k not in arrays)
    mismatched = sorted(k for k in arrays if k in spec and tuple(arrays[k].shape) != tuple(spec[k]))
    bad_unexpected = [k for k in unexpected if not _matches(k, skip)]
    bad_missing = [k for k in missing if not k.endswith(TORCH_ONLY_SUFFIX) and not _matches(k, skip)]
    bad_shape = [f"{k}: {tuple(arrays[k].shape)} vs {tuple(spec[k])}" for k in mismatched if not _matches(k, skip)]
    if bad_unexpected or bad_missing or bad_shape:
        parts = []
        if bad_unexpected:
            parts.append(f"{len(bad_unexpected)} keys the model does not have: "
                         + ", ".join(_describe(k) for k in _compress(bad_unexpected)))
        if bad_missing:
            parts.append(f"{len(bad_missing)} model keys missing in the file: "
                         + ", ".join(_describe(k) for k in _compress(bad_missing)))
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (file vs model): {bad_shape[:5]}")
        raise ConversionError("; ".join(parts), bad_missing, bad_unexpected, bad_shape)
    out = {k: arrays[k] for k in spec if k in arrays and k not in mismatched}
    kept = [k for k in spec if k not in out]
    for k in kept:
        out[k] = np.zeros((), np.int64) if k.endswith(TORCH_ONLY_SUFFIX) and k not in init else init[k]
    dropped = [k for k in unexpected] + [k for k in mismatched]
    if dropped:
        notes.append(f"skipped {len(dropped)} file keys: {', '.join(_compress(dropped))}")
    kept_init = [k for k in kept if not k.endswith(TORCH_ONLY_SUFFIX) or k in mismatched]
    if kept_init:
        notes.append(f"{len(kept_init)} model keys keep their fresh initialization: {', '.join(_compress(kept_init))}")
    return out, notes


def _compress(names: List[str], limit: int = 8) -> List[str]:
    """Names with layer indices folded ('x.layers.0.w', 'x.layers.1.w' -> 'x.layers.N.w'), at most `limit`."""
    folded = []
    for n in names:
        f = re.sub(r"\.\d+\.", ".N.", n)
        if f not in folded:
            folded.append(f)
    return folded[:limit] + ([f"... ({len(folded) - limit} more patterns)"] if len(folded) > limit else [])


def torchvision_resnet(arrays: Dict[str, np.ndarray], spec: Dict[str, tuple]) -> Tuple[Dict[str, np.ndarray],
                                                                                       List[str]]:
    """A torchvision ResNet ImageNet state dict -> the backbone body's (torch names), strict against `spec`
    (the body's {name: shape}); the classifier fc.* and BatchNorm counters are dropped."""
    if any(k.startswith("backbone.") for k in arrays):
        raise ConversionError("this is a detector checkpoint, not a torchvision ResNet; use `python -m convert "
                              "import` for released detectors")
    dropped = sorted(k for k in arrays if k.startswith("fc.") or k.endswith(TORCH_ONLY_SUFFIX))
    kept = {k: v for k, v in arrays.items() if k not in dropped}
    out, notes = fit_to_model(kept, spec, init={})
    if dropped:
        notes.insert(0, f"dropped the classifier and counters: {', '.join(_compress(dropped))}")
    return out, notes
