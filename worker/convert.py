"""``erdn convert``: an official ERDN checkpoint (TencentCloud/ERDN) to erdn-vs weights.

The official network and ours compute the same thing with different module names.
The rename table below maps every official state_dict key onto ours; two kinds of
official keys are dropped on purpose because the official forward never reads them:

* ``flow_net*.conv_l4_c_1/2``: two convs that Flow_Deform registers but never calls;
* ``get_grad.weight_h/v``: the fixed central-difference kernels, registered as
  (frozen) parameters; ours are a non-persistent buffer with the same values.

Anything else that does not map, or maps onto a tensor of another shape, stops the
conversion with a message that names the key. The checkpoint is read with
``torch.load(weights_only=True)``: nothing is unpickled beyond plain tensors.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Official top-level module -> (our stage, our part). The official cascade's second
# stage is the same three modules with a "_new" suffix.
STAGE_PARTS: dict[str, tuple[str, str]] = {
    "flow_net": ("stage1", "align"),
    "recons_net": ("stage1", "restore"),
    "grad_net": ("stage1", "gradient"),
    "flow_net_new": ("stage2", "align"),
    "recons_net_new": ("stage2", "restore"),
    "grad_net_new": ("stage2", "gradient"),
}

Rule = tuple[str, str | Callable[[re.Match[str]], str]]


def _index_minus_1(template: str) -> Callable[[re.Match[str]], str]:
    """Replacement that fills ``template`` with group 1 minus one (official 1-based levels
    and indices -> ours) and group 2 unchanged."""
    return lambda m: template.format(int(m[1]) - 1, m[2])


# The official three-scale encoder-decoder (RECONS_VIDEO) -> our EncoderDecoder. Same
# Sequential layouts, so only the names change.
ENCODER_DECODER_RULES: list[Rule] = [
    (r"inBlock\.(.+)", r"in_block.\1"),
    (r"encoder_first\.(.+)", r"encoder1.\1"),
    (r"encoder_second\.(.+)", r"encoder2.\1"),
    (r"decoder_second\.(.+)", r"decoder2.\1"),
    (r"decoder_first\.(.+)", r"decoder1.\1"),
    (r"outBlock\.(.+)", r"out_block.\1"),
]

# Official Flow_Deform (alignment) -> our AlignmentModule. Official pyramid levels are
# l1 (full resolution) .. l4; ours are list indices 0 .. 3.
ALIGN_RULES: list[Rule] = [
    (r"conv_first\.(weight|bias)", r"conv_first.\1"),
    (r"feature_extraction\.(.+)", r"extract.\1"),
    # conv_l{2,3,4}_{1,2}: the stride-2 and the 3x3 conv of pyramid levels 2..4.
    (r"conv_l([234])_([12])\.(weight|bias)", lambda m: f"down.{int(m[1]) - 2}.{int(m[2]) - 1}.{m[3]}"),
    # conv_l{1,2,3}_t: 1x1 convs from the centre encoder's features to the pyramid's width.
    (r"conv_l([123])_t\.(weight|bias)", _index_minus_1("center_to_pyramid.{}.{}")),
    (r"pcd_align\.offset_conv1\.l([1-4])\.rfblock\.(.+)", _index_minus_1("pyramid_align.offset_erf.{}.paths.{}")),
    (r"pcd_align\.offset_conv1\.l([1-4])\.last_layer\.(.+)", _index_minus_1("pyramid_align.offset_erf.{}.fuse.{}")),
    (r"pcd_align\.offset_conv2\.l([1-3])\.(.+)", _index_minus_1("pyramid_align.offset_fuse.{}.{}")),
    (r"pcd_align\.dcn_pack\.l([1-4])\.(.+)", _index_minus_1("pyramid_align.dcn.{}.{}")),
    (r"pcd_align\.feat_conv\.l([1-3])\.(.+)", _index_minus_1("pyramid_align.feat_fuse.{}.{}")),
    (r"pcd_align\.cas_offset_conv1\.(.+)", r"pyramid_align.cascade_offset1.\1"),
    (r"pcd_align\.cas_offset_conv2\.(.+)", r"pyramid_align.cascade_offset2.\1"),
    (r"pcd_align\.cas_dcnpack\.(.+)", r"pyramid_align.cascade_dcn.\1"),
    (r"reconstruction\.(.+)", r"reconstruct.\1"),
    (r"conv_last\.(weight|bias)", r"conv_last.\1"),
    *((r"center_net\." + pattern, "center." + repl) for pattern, repl in ENCODER_DECODER_RULES),
]

# Official RECONS_GRAD -> our GradientBranch.
GRADIENT_RULES: list[Rule] = [
    # Official in_layer is one flat Sequential (conv, ReLU, ResBlocks...); ours nests the
    # conv+ReLU as item 0, so the ResBlocks move down by one index.
    (r"in_layer\.0\.(weight|bias)", r"in_layer.0.0.\1"),
    (r"in_layer\.(\d+)\.(.+)", _index_minus_1("in_layer.{}.{}")),
    (r"inBlock\.(.+)", r"in_block.\1"),
    (r"down_first\.(.+)", r"down1.\1"),
    (r"encoder_first\.(.+)", r"encoder1.\1"),
    (r"down_second\.(.+)", r"down2.\1"),
    (r"encoder_second\.(.+)", r"encoder2.\1"),
    (r"decoder_second\.(.+)", r"decoder2.\1"),
    (r"decoder_second_up\.(.+)", r"up2.\1"),
    (r"decoder_first\.(.+)", r"decoder1.\1"),
    (r"decoder_first_up\.(.+)", r"up1.\1"),
    (r"outBlock\.(.+)", r"out_block.\1"),
    (r"recons_output\.(.+)", r"to_gradient.\1"),
    (r"condition_scale\.(.+)", r"sft_scale.\1"),
    (r"condition_shift\.(.+)", r"sft_shift.\1"),
]

PART_RULES: dict[str, list[Rule]] = {
    "align": ALIGN_RULES,
    "restore": ENCODER_DECODER_RULES,
    "gradient": GRADIENT_RULES,
}

# Official keys the official forward never reads (see the module docstring).
UNUSED_KEYS = re.compile(r"(flow_net(_new)?\.conv_l4_c_[12]\.(weight|bias))|(get_grad\.weight_[hv])")

# Entries of a checkpoint dict that training code keeps the weights under, in the order one is
# taken when several are present: averaged (EMA) weights first, as BasicSR's and timm's own
# inference does. ``erdn convert --key`` takes another.
WEIGHT_ENTRIES = ("params_ema", "state_dict_ema", "model_ema", "ema", "params", "state_dict", "model", "net", "network")
# Key prefixes that wrappers add, stripped while every key carries one; the value says who adds it.
WRAPPER_PREFIXES = {
    "module.": "DataParallel/DistributedDataParallel, or an EMA copy such as AveragedModel",
    "_orig_mod.": "torch.compile",
    "model.": "a wrapping module's 'model' attribute",
}
# torch.optim.swa_utils.AveragedModel keeps its update count beside the 'module.' keys.
AVERAGED_COUNT = "n_averaged"
# EMA helpers that are modules hold the averaged copy as ``self.ema_model`` beside the live model.
EMA_COPY_PREFIX = "ema_model."


class ConversionError(ValueError):
    """The checkpoint is not an official ERDN state_dict we can convert; the message says why."""


def official_to_ours(key: str) -> str | None:
    """Our state_dict key for an official one; None for the known-unused keys.

    Raises ConversionError for a key the table does not know.
    """
    if UNUSED_KEYS.fullmatch(key):
        return None
    top, _, rest = key.partition(".")
    if top in STAGE_PARTS:
        stage, part = STAGE_PARTS[top]
        for pattern, repl in PART_RULES[part]:
            m = re.fullmatch(pattern, rest)
            if m:
                return f"{stage}.{part}." + (repl(m) if callable(repl) else m.expand(repl))
    hint = ""
    if rest.partition(".")[0] in STAGE_PARTS or rest.startswith("get_grad."):
        hint = f" (it is {rest!r} under a {top + '.'!r} prefix this converter does not know)"
    raise ConversionError(f"unexpected key {key!r}: not part of the official ERDN network{hint}")


def _select_entry(checkpoint: dict[str, Any], key: str | None, notes: list[str]) -> dict[str, Any]:
    """The weights dict inside a checkpoint's (possibly nested) entries; notes which entry was taken."""
    import torch

    state = checkpoint
    for _ in range(3):  # at most a few levels of nesting
        if not isinstance(state, dict) or (state and all(isinstance(v, torch.Tensor) for v in state.values())):
            break
        entries = [k for k in WEIGHT_ENTRIES if isinstance(state.get(k), dict)]
        if key is not None and isinstance(state.get(key), dict):
            entries = [key] + [k for k in entries if k != key]
            key = None
        if not entries:
            break
        taken, others = entries[0], entries[1:]
        note = f"took the {taken!r} entry"
        if others:
            note += f" (the file also holds {', '.join(map(repr, others))}: --key {others[0]} takes that)"
        notes.append(note)
        state = state[taken]
    if key is not None:
        raise ConversionError(f"the checkpoint has no entry {key!r} holding weights")
    return state


def unwrap(checkpoint: Any, key: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The state_dict inside a loaded checkpoint, and what was stripped to reach it.

    Recognises what training code commonly wraps weights in: ``{'state_dict': ...}``-style entries
    (BasicSR ``params``/``params_ema``, timm ``state_dict_ema``, ...; EMA entries win unless ``key``
    names another), DataParallel/DDP's ``module.`` prefix, torch.compile's ``_orig_mod.``,
    ``torch.optim.swa_utils.AveragedModel`` (``module.`` plus ``n_averaged``) and EMA modules'
    ``ema_model.`` copy. Returns (state_dict, notes: one phrase per thing stripped).
    Raises ConversionError when no dict of tensors is found.
    """
    import torch

    notes: list[str] = []
    state = _select_entry(checkpoint, key, notes)
    if not isinstance(state, dict) or not state:
        raise ConversionError("the file holds no state_dict (expected a dict of tensors)")
    averaged = {k: v for k, v in state.items() if k != AVERAGED_COUNT}
    if AVERAGED_COUNT in state and averaged and all(k.startswith("module.") for k in averaged):
        state = averaged
        notes.append(f"dropped {AVERAGED_COUNT} (torch.optim.swa_utils.AveragedModel's update count)")
    ema_keys = [k for k in state if k.startswith(EMA_COPY_PREFIX)]
    if ema_keys and len(ema_keys) < len(state):
        left = [k for k in state if not k.startswith(EMA_COPY_PREFIX)]
        state = {k: state[k] for k in ema_keys}
        notes.append(f"took the keys under {EMA_COPY_PREFIX!r} (an EMA module's averaged copy) and left out "
                     f"{len(left)} others such as {left[0]!r}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"the state_dict holds non-tensor entries: {not_tensors[:5]}")
    prefixes = WRAPPER_PREFIXES | {EMA_COPY_PREFIX: "an EMA module's averaged copy"}
    stripped = True
    while stripped:
        stripped = False
        for prefix, who in prefixes.items():
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                notes.append(f"stripped the {prefix!r} prefix ({who})")
                stripped = True
    return state, notes


def _count(state: dict[str, Any], pattern: str) -> int:
    return sum(1 for k in state if re.fullmatch(pattern, k))


def infer_config(state: dict[str, Any]):
    """The ERDNConfig whose stage-1 shapes match an official state_dict (our names)."""
    from worker.model import ERDNConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ConversionError(f"missing key for {key!r}: the checkpoint is not a complete ERDN stage 1")
        return tuple(state[key].shape)

    p = "stage1."
    offset_channels = shape(p + "align.pyramid_align.cascade_dcn.conv_offset.weight")[0]
    dcn_kernel = shape(p + "align.pyramid_align.cascade_dcn.weight")[-1]
    try:
        return ERDNConfig(
            align_feat=shape(p + "align.conv_first.weight")[0],
            deform_groups=offset_channels // (3 * dcn_kernel * dcn_kernel),
            extract_blocks=_count(state, r"stage1\.align\.extract\.\d+\.conv1\.weight"),
            reconstruct_blocks=_count(state, r"stage1\.align\.reconstruct\.\d+\.conv1\.weight"),
            center_feat=shape(p + "align.center.in_block.0.0.weight")[0],
            center_blocks=_count(state, r"stage1\.align\.center\.in_block\.\d+\.conv1\.weight"),
            restore_feat=shape(p + "restore.in_block.0.0.weight")[0],
            restore_blocks=_count(state, r"stage1\.restore\.in_block\.\d+\.conv1\.weight"),
            kernel_size=shape(p + "restore.in_block.0.0.weight")[-1],
            gradient_in_blocks=_count(state, r"stage1\.gradient\.in_layer\.\d+\.conv1\.weight"),
            gradient_blocks=_count(state, r"stage1\.gradient\.in_block\.\d+\.conv1\.weight"),
        )
    except ValueError as e:
        raise ConversionError(f"the checkpoint's shapes give no valid ERDN configuration ({e})") from None


def _check_gradient_kernels(official: dict[str, Any]) -> None:
    """The dropped get_grad kernels must be the fixed ones our GradientMap hard-codes."""
    import torch

    expected = {
        "get_grad.weight_v": torch.tensor([[0.0, -1, 0], [0, 0, 0], [0, 1, 0]]),
        "get_grad.weight_h": torch.tensor([[0.0, 0, 0], [-1, 0, 1], [0, 0, 0]]),
    }
    for key, kernel in expected.items():
        if key in official and not torch.equal(official[key].float().reshape(3, 3), kernel):
            raise ConversionError(f"{key} is not the central-difference kernel the ERDN gradient map uses")


def convert_state_dict(official: dict[str, Any], frames: int | None = None):
    """Our ERDN model holding the weights of an official state_dict.

    ``frames`` None: 5 if the checkpoint has the second stage (``*_new`` modules), else 3.
    ``frames=3`` on a two-stage checkpoint keeps stage 1 only (official 'single' phase
    training still saves an untrained second stage).
    """
    import torch

    from worker.model import PRESETS, build_model

    _check_gradient_kernels(official)
    has_stage2 = any(k.split(".", 1)[0].endswith("_new") for k in official)
    if frames is None:
        frames = 5 if has_stage2 else 3
    if frames == 5 and not has_stage2:
        raise ConversionError("frames=5 needs the second stage (flow_net_new, ...), which this checkpoint lacks")

    ours: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, tensor in official.items():
        new = official_to_ours(key)
        if new is None or (frames == 3 and new.startswith("stage2.")):
            continue
        if new in ours:
            raise ConversionError(f"keys {source[new]!r} and {key!r} both map to {new!r}")
        ours[new], source[new] = tensor, key

    cfg = infer_config(ours)
    preset = next((name for name, preset_cfg in PRESETS.items() if preset_cfg == cfg), None)
    with torch.device("meta"):  # shapes only; the real tensors come from the checkpoint
        model = build_model(preset or cfg, frames=frames)
    expected = model.state_dict()
    missing = [k for k in expected if k not in ours]
    if missing:
        raise ConversionError(
            f"{len(missing)} weights missing for an ERDN with frames={frames} and config {cfg}, e.g. {missing[:3]}"
        )
    for k, tensor in ours.items():
        if k not in expected:
            raise ConversionError(f"{source[k]!r} has no place in an ERDN with config {cfg}")
        if tuple(tensor.shape) != tuple(expected[k].shape):
            raise ConversionError(
                f"{source[k]!r} has shape {tuple(tensor.shape)}, but the ERDN inferred from this checkpoint "
                f"({cfg}) needs {tuple(expected[k].shape)} for it"
            )
    model = build_model(preset or cfg, frames=frames)
    model.load_state_dict({k: v.detach().float().contiguous() for k, v in ours.items()})
    return model.eval()


def load_official(path: str | Path, key: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The official state_dict in a .pth/.pt file, read without unpickling objects, and what
    was stripped to reach it (see ``unwrap``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to parse the file means it is not a checkpoint: the weights-only
        # unpickler raises KeyError, IndexError, ... on random bytes, not only UnpicklingError
        import pickle

        told = isinstance(e, (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError)) and str(e).strip()
        first_line = str(e).strip().splitlines()[0] if told else "its bytes are not a PyTorch checkpoint"
        raise ConversionError(
            f"{path} cannot be read as a plain PyTorch state_dict ({first_line}); "
            f"only tensor checkpoints (torch.load weights_only=True) are accepted"
        ) from None
    return unwrap(checkpoint, key)


def convert_file(src: str | Path, dst: str | Path, frames: int | None = None, key: str | None = None) -> Path:
    """Convert ``src`` (official .pth) into erdn-vs safetensors at ``dst``.

    The weights file's metadata lists what was stripped (``unwrapped``). ``key`` picks the
    checkpoint entry that holds the weights (default: see ``WEIGHT_ENTRIES``).
    """
    from worker.model import save_model

    state, notes = load_official(src, key)
    try:
        model = convert_state_dict(state, frames=frames)
    except ConversionError as e:
        raise ConversionError(f"{e}; read after this unwrapping: {'; '.join(notes)}" if notes else str(e)) from None
    return save_model(model, dst, source="official ERDN checkpoint", original=Path(src).name, unwrapped=notes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="erdn convert",
        description="Convert an official ERDN checkpoint (TencentCloud/ERDN, .pth) to erdn-vs safetensors weights.",
    )
    parser.add_argument("official", help="official checkpoint (.pth / .pt state_dict)")
    parser.add_argument("out", help="output weights file (.safetensors)")
    parser.add_argument(
        "--frames",
        type=int,
        choices=(3, 5),
        default=None,
        help="3: stage 1 only; 5: the two-stage cascade. Default: 5 if the checkpoint has a second "
        "stage, else 3. Use 3 for a checkpoint trained in the official 'single' phase.",
    )
    parser.add_argument(
        "--key",
        default=None,
        help="the checkpoint entry that holds the weights, e.g. params when the file also holds params_ema "
        f"(default: the first of {', '.join(WEIGHT_ENTRIES)} present)",
    )
    args = parser.parse_args(argv)
    try:
        path = convert_file(args.official, args.out, frames=args.frames, key=args.key)
    except ConversionError as e:
        print(f"erdn convert: {args.official}: {e}", file=sys.stderr)
        return 1
    from worker.model.weights import read_metadata

    meta = read_metadata(path)
    print(f"wrote {path} (preset {meta['preset']}, frames={meta['frames']})")
    for note in meta["metadata"].get("unwrapped", []):
        print(f"  {note}")
    return 0
