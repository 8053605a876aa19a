"""Memory format around pruning, and a guard against a oneDNN crash that pruned channels_last models meet on CPU.

Two findings (measured with torch 2.14.1+cu130, its bundled oneDNN 3.12.0, an AVX-512 CPU, Torch-Pruning 1.6.0):

* Torch-Pruning's ``index_select`` returns pruned conv weights in the default (NCHW) memory format: a model in
  channels_last comes back with its pruned weights NCHW-contiguous (the strides are plain ones, never odd; 1x1
  kernels read as both formats). :func:`memory_format_of` before pruning and :func:`restore_memory_format` after it
  put them (and their gradients) back in the model's format.
* The backward pass of a channels_last ``Conv2d`` with a 1x1 kernel and stride 2 crashes inside oneDNN
  (``jit_avx512_common_1x1_convolution_bwd_weights_t::execute_backward_weights``, in a worker thread: a segfault,
  or glibc's "double free or corruption") when it has 5-15 input channels and the batch is not a multiple of the
  thread count (17 images on 2 threads; 16 on 3). An unpruned CIFAR ResNet-56 never meets it (its 1x1 stride-2
  shortcuts read 16 and 32 channels), a pruned one does (``layer2.0.downsample.0`` reading 11 channels) as soon as a
  fine-tune's last batch is odd. Only channels_last takes that kernel: in NCHW, with one thread, or with oneDNN off
  the same step runs. :func:`guard_strided_1x1_convs` makes exactly those layers run in NCHW on CPU (their input
  and weight; the rest of the model keeps channels_last).

Minimal reproduction (no pruning involved)::

    import torch, torch.nn as nn
    torch.set_num_threads(2)
    conv = nn.Conv2d(11, 32, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(17, 11, 32, 32).contiguous(memory_format=torch.channels_last)
    conv(x).sum().backward()   # segfault
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["memory_format_of", "restore_memory_format", "guard_strided_1x1_convs", "needs_nchw_guard"]

#: oneDNN's channels_last 1x1 backward-weights kernel blocks input channels by 16 (crashes seen for 5-15 channels)
_CHANNEL_BLOCK = 16


def _convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.weight.dim() == 4]


def _plain_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _in_format(t: torch.Tensor, memory_format: torch.memory_format) -> bool:
    """Whether ``t`` is laid out in ``memory_format`` (for the default format: exactly the plain strides, which a
    1x1 kernel in channels_last strides does not have although ``is_contiguous()`` says it is)."""
    if memory_format == torch.contiguous_format:
        return t.stride() == _plain_strides(t.shape)
    return t.is_contiguous(memory_format=memory_format)


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """``torch.channels_last`` if the model's 4-D conv weights with kernels larger than 1x1 are all in channels_last
    (and not NCHW), else ``torch.contiguous_format``. Call it before pruning: its result is what
    :func:`restore_memory_format` restores."""
    weights = [m.weight for _, m in _convs(model) if m.weight.shape[2] * m.weight.shape[3] > 1]
    if weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                       for w in weights):
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def restore_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Make every 4-D conv weight (and its gradient, if any) contiguous in ``memory_format`` (what
    :func:`memory_format_of` read before pruning), in place; the parameters stay the same objects (optimisers
    holding them keep working) and their values are unchanged. Returns ``model``.

    Raises:
        ValueError: ``memory_format`` is not ``torch.contiguous_format`` or ``torch.channels_last``.
    """
    if memory_format not in (torch.contiguous_format, torch.channels_last):
        raise ValueError(f"memory_format must be torch.contiguous_format or torch.channels_last, got {memory_format!r}")
    for _, conv in _convs(model):
        w = conv.weight
        if not _in_format(w, memory_format):
            w.data = w.data.clone(memory_format=memory_format)
        if w.grad is not None and not _in_format(w.grad, memory_format):
            w.grad = w.grad.clone(memory_format=memory_format)
    return model


def needs_nchw_guard(conv: nn.Module) -> bool:
    """Whether ``conv`` is a layer that oneDNN's channels_last 1x1 backward-weights kernel can crash on: a ``Conv2d``
    with a 1x1 kernel, a stride other than 1 and an input channel count that is not a multiple of 16 (conservative:
    crashes were seen for 5-15 channels, not for 1-4, 17-44)."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) != (1, 1)
            and conv.in_channels % _CHANNEL_BLOCK != 0)


def _nchw_on_cpu(module: nn.Conv2d, args: tuple):
    """Forward pre-hook: on CPU, the layer's input and weight in NCHW, so oneDNN takes its NCHW kernels (both must
    be: PyTorch picks channels_last if either is)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu" or x.dim() != 4 or not needs_nchw_guard(module):
        return None
    w = module.weight
    if not _in_format(w, torch.contiguous_format):
        with torch.no_grad():
            w.data = w.data.clone(memory_format=torch.contiguous_format)
    if _in_format(x, torch.contiguous_format):
        return None
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])


def guard_strided_1x1_convs(model: nn.Module) -> list[str]:
    """Workaround for the oneDNN crash above: every layer of ``model`` that :func:`needs_nchw_guard` runs in NCHW on
    CPU (a forward pre-hook converts its input and weight; CUDA and other devices are untouched; the output is the
    same up to float rounding). Idempotent; the hooks travel with ``copy.deepcopy`` and pickling. Call it after
    pruning (widths change which layers need it) and again after a later prune. Returns the guarded layers' names.
    """
    guarded = []
    for name, conv in _convs(model):
        if not needs_nchw_guard(conv):
            continue
        if not any(hook is _nchw_on_cpu for hook in conv._forward_pre_hooks.values()):
            conv.register_forward_pre_hook(_nchw_on_cpu)
        guarded.append(name)
    return guarded
