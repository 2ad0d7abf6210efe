"""Growing a trained ERDN into a deeper one without changing what it computes (function-preserving deepening).

A deeper preset of the same widths (more residual blocks in some parts, e.g. ``lite`` -> ``lite_deep``) starts
from a trained shallower model: every layer the two share takes the trained weights, and every extra residual
block starts as the identity (its second convolution zero), so the grown network's output equals the trained
one's and training goes on from there instead of from scratch. The idea is Net2DeeperNet (Chen, Goodfellow and
Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016) in the residual form: x + 0 = x.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from worker.model.blocks import ResBlock, ScaledResBlock
from worker.model.presets import ERDNConfig

RESIDUAL_BLOCKS = (ResBlock, ScaledResBlock)
# Depths that may grow; every other field (widths, kernel, groups, residual) must match.
DEPTH_FIELDS = ("extract_blocks", "reconstruct_blocks", "center_blocks", "restore_blocks",
                "gradient_in_blocks", "gradient_blocks")


class GrowError(ValueError):
    """The source network cannot grow into the target: the message names the first part that does not fit."""


def can_grow(source: ERDNConfig, target: ERDNConfig) -> str | None:
    """None when ``target`` differs from ``source`` only by at least as many blocks in each part; else why not."""
    for f in dataclasses.fields(ERDNConfig):
        a, b = getattr(source, f.name), getattr(target, f.name)
        if f.name in DEPTH_FIELDS:
            if b < a:
                return f"{f.name} would shrink from {a} to {b}"
        elif a != b:
            return f"{f.name} differs (source {a}, target {b}); only depths ({', '.join(DEPTH_FIELDS)}) can grow"
    return None


def _identity_block(block: nn.Module) -> None:
    """A residual block x + conv2(relu(conv1(x))) made the identity: conv2 zero (conv1 keeps its fresh init)."""
    nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(block.conv2.bias)


@torch.no_grad()
def grow_into(target: nn.Module, source: nn.Module, where: str = "") -> None:
    """Copy ``source``'s weights into ``target``, a deeper copy of it; extra residual blocks become the identity.

    Containers (``nn.Sequential``, ``nn.ModuleList``) are matched in order: a target child of the source child's
    type takes it; a residual block the source lacks at that position is an extra one. Other modules are matched
    by child name. Raises GrowError naming the first module (``where``) whose layers do not line up."""
    for name, param in source.named_parameters(recurse=False):
        own = getattr(target, name, None)
        if not isinstance(own, torch.Tensor) or own.shape != param.shape:
            raise GrowError(f"{where or 'model'}.{name}: shape {tuple(param.shape)} has no counterpart")
        own.copy_(param)
    for name, buf in source.named_buffers(recurse=False):
        own = getattr(target, name, None)
        if not isinstance(own, torch.Tensor) or own.shape != buf.shape:
            raise GrowError(f"{where or 'model'}.{name}: buffer of shape {tuple(buf.shape)} has no counterpart")
        own.copy_(buf)
    if isinstance(source, (nn.Sequential, nn.ModuleList)):
        if type(target) is not type(source):
            raise GrowError(f"{where or 'model'}: source {type(source).__name__}, target {type(target).__name__}")
        left = list(source)
        for i, child in enumerate(target):
            if left and type(left[0]) is type(child):
                grow_into(child, left.pop(0), f"{where}.{i}")
            elif isinstance(child, RESIDUAL_BLOCKS):
                _identity_block(child)
            else:
                raise GrowError(f"{where}.{i}: a {type(child).__name__} the source has no counterpart for")
        if left:
            raise GrowError(f"{where or 'model'}: {len(left)} trained layers have no place in the target")
        return
    theirs = dict(source.named_children())
    ours = {n for n, _ in target.named_children()}
    if set(theirs) != ours:
        raise GrowError(f"{where or 'model'}: parts differ (source {sorted(theirs)}, target {sorted(ours)})")
    for name, child in target.named_children():
        grow_into(child, theirs[name], f"{where}.{name}" if where else name)
