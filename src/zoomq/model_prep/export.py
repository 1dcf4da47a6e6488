"""The conversion pieces every exported part shares: what a part is (``Part``), the UNet as it is
exported (GEGLU split, DeepCache's features as extra outputs), and the two routes from a PyTorch
module to an IR file (``convert_part``). Used by ``convert`` (the pipeline's parts) and
``deepcache_export`` (the shallow UNets)."""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openvino as ov
import torch
from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

#: Bytes of weights above which a part's memory is collected as soon as it is converted.
LARGE_PART = 64 * 2**20


@dataclass(frozen=True)
class Part:
    """One IR file to produce: its name, how to build the torch module, its inputs."""

    name: str
    build: Callable[[Path], torch.nn.Module]
    # (input name, shape with -1 for dynamic dims, example tensor factory)
    inputs: tuple[tuple[str, list[int], Callable[[], torch.Tensor]], ...]
    #: names of the outputs after the first (``out``)
    outputs: tuple[str, ...] = ()


class SplitGEGLU(torch.nn.Module):
    """diffusers' GEGLU (one projection, then split in value and gate halves) as two projections.

    The same products and sums, so the same numbers; but OpenVINO's CPU plugin ran the split as a
    reference kernel, and without it the full UNet step at 512 px took 1.01 s instead of 1.06 (bf16, AMX).
    """

    def __init__(self, geglu):
        super().__init__()
        weight, bias = geglu.proj.weight, geglu.proj.bias
        half = weight.shape[0] // 2
        self.value = torch.nn.Linear(weight.shape[1], half, bias=bias is not None)
        self.gate = torch.nn.Linear(weight.shape[1], half, bias=bias is not None)
        with torch.no_grad():
            self.value.weight.copy_(weight[:half])
            self.gate.weight.copy_(weight[half:])
            if bias is not None:
                self.value.bias.copy_(bias[:half])
                self.gate.bias.copy_(bias[half:])

    def forward(self, hidden_states, *args, **kwargs):
        return self.value(hidden_states) * torch.nn.functional.gelu(self.gate(hidden_states))  # as GEGLU.gelu on CPU


class ExportUNet(torch.nn.Module):
    """The UNet, its GEGLUs split; with ``hooks`` (DeepCache's ``FeatureHooks`` on this model) it
    also returns each hooked branch's deep feature, outputs ``feature_B`` after the noise prediction
    (see ``model_prep.deepcache_export``)."""

    def __init__(self, model, hooks=None):
        super().__init__()
        from diffusers.models.activations import GEGLU

        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if type(child) is GEGLU:
                    setattr(module, name, SplitGEGLU(child))
        self.model = model
        self.hooks = hooks
        self.keep = tuple(hooks.branches) if hooks is not None else ()

    def forward(self, sample, timestep, encoder_hidden_states):
        noise = self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        if not self.keep:
            return noise
        return (noise, *(self.hooks.features[b] for b in self.keep))


def name_io(model: ov.Model, part: Part) -> ov.Model:
    model.set_friendly_name(part.name)
    for port, (name, _, _) in zip(model.inputs, part.inputs):
        port.get_tensor().set_names({name})
    model.outputs[0].get_tensor().set_names({"out"})
    for port, name in zip(model.outputs[1:], part.outputs):
        port.get_tensor().set_names({name})
    return model


def _convert_direct(module: torch.nn.Module, part: Part) -> ov.Model:
    example = tuple(make() for _, _, make in part.inputs)
    shapes = [(ov.PartialShape(shape), ov.Type.i64 if ex.dtype == torch.int64 else ov.Type.f32)
              for (_, shape, _), ex in zip(part.inputs, example)]
    # torch.jit.trace's check_trace traces the module a second time and runs both traces to compare
    # them: a seventh of a miniature model's build. The IR is checked against diffusers instead
    # (tests/test_parity.py), as public OpenVINO conversion helpers for large models skip it.
    decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
    with torch.no_grad():
        return ov.convert_model(decoder, example_input=example, input=shapes)


def _convert_via_onnx(module: torch.nn.Module, part: Part, workdir: Path) -> ov.Model:
    example = tuple(make() for _, _, make in part.inputs)
    names = [name for name, _, _ in part.inputs]
    dynamic_axes = {
        name: {i: f"{name}_{i}" for i, dim in enumerate(shape) if dim == -1}
        for name, shape, _ in part.inputs
    }
    path = workdir / f"{part.name}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=names,
            output_names=["out", *part.outputs],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
    return ov.convert_model(str(path))


def convert_part(
    folder: Path,
    part: Part,
    dest: Path,
    *,
    route: str = "direct",
    weights: str = "fp16",
) -> Path:
    """Convert one sub-model of ``folder`` and write ``dest/<name>.xml`` (+ ``.bin``)."""
    module = part.build(folder).eval()
    # A full collection after a large part returns what reference cycles still hold of it before the
    # next part loads; it takes a quarter of a second in a process that has imported torch, which a
    # miniature part's few MB are not worth (two per part: a seventh of its build).
    large = sum(t.numel() * t.element_size() for t in module.state_dict().values()) > LARGE_PART
    with tempfile.TemporaryDirectory(prefix="zoomq-onnx-", dir=dest) as workdir:
        if route == "onnx":
            model = _convert_via_onnx(module, part, Path(workdir))
        else:
            model = _convert_direct(module, part)
        del module
        if large:
            gc.collect()
        model = name_io(model, part)
        if weights == "int8":
            import nncf  # optional speed-neutral size reduction; imported only when asked for

            model = nncf.compress_weights(model)
        xml = dest / f"{part.name}.xml"
        ov.save_model(model, xml, compress_to_fp16=(weights == "fp16"))
    del model
    if large:
        gc.collect()
    return xml
