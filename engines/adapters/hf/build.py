"""Building HF models for the HF engines (worker side, imports torch): a checkpoint directory, or an
architecture preset with deterministic random weights made directly on the target device.

Random weights (presets): parameters are created on the meta device (accelerate's init_empty_weights,
buffers such as rotary frequencies are built normally on the device), then each one is allocated on
the target device in the target dtype and filled from its own generator, seeded with
(seed, crc32(parameter name)), so a weight never depends on build order. Norm weights are ones,
biases zeros, embeddings and linear weights N(0, 0.02), an untied lm_head N(0, 2/sqrt(fan_in))
(logits with a std of about 2, as in `tiny`). Deterministic per device type: CPU and CUDA generators
differ. With --quant int8/nf4/fp4 each nn.Linear but lm_head is drawn in the compute dtype and
quantized on the spot into its bitsandbytes layer, one layer at a time: the full-precision model
never exists, and nothing passes through host memory.

`python -m engines.adapters.hf.build NAME...` prints parameter counts computed on the meta device (the numbers
cached in assets/presets/*.json).
"""

from __future__ import annotations

import json
import sys
import zlib
from typing import Any

import torch
from torch import nn

from engines.models import presets

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHTS_SEED = 20240917
WEIGHT_STD = 0.02


def hf_config(preset: presets.Preset, overrides: dict[str, Any] | None = None):
    from transformers import AutoConfig

    cfg = dict(preset.config)
    cfg.update(overrides or {})
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def config_overrides(config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Config changes the engine options ask for (layers, sliding_window), with the key names of this config."""
    out: dict[str, Any] = {}
    if options.get("layers") is not None:
        out["n_layer" if "n_layer" in config else "num_hidden_layers"] = options["layers"]
    if "sliding_window" in options:
        if "sliding_window" not in config:
            raise ValueError(f"this {config.get('model_type')} model has no sliding window to override")
        out["sliding_window"] = options["sliding_window"]
        if options["sliding_window"] is None and "use_sliding_window" in config:
            out["use_sliding_window"] = False
    return out


def quantizable(name: str, module: nn.Module) -> bool:
    """The linears bitsandbytes quantizes: every nn.Linear but the output head (as transformers does)."""
    return type(module) is nn.Linear and name.split(".")[-1] != "lm_head"


def count_params(preset: presets.Preset) -> tuple[int, int]:
    """(all parameters, quantizable linear weights) of a preset, on the meta device: no memory needed."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(preset))
    total = sum(p.numel() for p in model.parameters())  # shared (tied) parameters are yielded once
    linear = sum(m.weight.numel() for n, m in model.named_modules() if quantizable(n, m))
    return total, linear


def _generator(device: torch.device, seed: int, name: str) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return g


def _fill(t: torch.Tensor, name: str, kind: str, seed: int) -> torch.Tensor:
    if kind == "ones":
        return t.fill_(1.0)
    if kind == "zeros":
        return t.zero_()
    std = 2.0 / t.shape[-1] ** 0.5 if kind == "head" else WEIGHT_STD
    return t.normal_(0.0, std, generator=_generator(t.device, seed, name))


def _kind(module_name: str, pname: str, p: nn.Parameter, tied_head: bool) -> str:
    if p.dim() == 1:
        return "zeros" if pname == "bias" else "ones"
    if module_name.split(".")[-1] == "lm_head" and not tied_head:
        return "head"
    return "normal"


def _bnb_linear(linear: nn.Module, name: str, quant: str, dtype: torch.dtype, double_quant: bool,
                device: torch.device, seed: int) -> nn.Module:  # fmt: skip
    """A bitsandbytes layer with this linear's shape, its weight drawn and quantized on `device`."""
    import bitsandbytes as bnb

    out_f, in_f = linear.weight.shape
    has_bias = linear.bias is not None
    w = _fill(torch.empty(out_f, in_f, dtype=dtype, device=device), f"{name}.weight", "normal", seed)
    with torch.device("meta"):
        if quant == "int8":
            new = bnb.nn.Linear8bitLt(in_f, out_f, has_bias, has_fp16_weights=False, threshold=6.0)
        else:
            new = bnb.nn.Linear4bit(in_f, out_f, has_bias, compute_dtype=dtype, compress_statistics=double_quant,
                                    quant_type=quant, quant_storage=torch.uint8)  # fmt: skip
    if quant == "int8":
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
        new.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    else:
        new.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=double_quant, quant_type=quant,
                                       quant_storage=torch.uint8, module=new).to(device)  # fmt: skip
    del w
    if has_bias:
        new.bias = nn.Parameter(torch.zeros(out_f, dtype=dtype, device=device), requires_grad=False)
    return new


def random_model(preset: presets.Preset, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                 quant: str | None = None, double_quant: bool = False, overrides: dict[str, Any] | None = None,
                 seed: int = WEIGHTS_SEED) -> nn.Module:  # fmt: skip
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = hf_config(preset, overrides)
    with torch.device(device), init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    # accelerate's parameter hook unties shared weights while building: tie them again, as configured.
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied_head = out_emb is not None and bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    if tied_head:
        out_emb.weight = in_emb.weight
    if quant is not None:
        for name, module in list(model.named_modules()):
            if quantizable(name, module):
                model.set_submodule(name, _bnb_linear(module, name, quant, dtype, double_quant, device, seed))
    made: dict[int, nn.Parameter] = {}  # meta parameter -> its real one (tied weights stay tied)
    for mname, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in made:
                full = f"{mname}.{pname}" if mname else pname
                t = torch.empty(p.shape, dtype=dtype, device=device)
                made[id(p)] = nn.Parameter(_fill(t, full, _kind(mname, pname, p, tied_head), seed), requires_grad=False)
            module._parameters[pname] = made[id(p)]
    for name, b in model.named_buffers():
        if b.device.type == "meta":
            raise RuntimeError(f"buffer {name} was left on the meta device")
    model.eval()
    _bnb_cpu_packing_off(model, double_quant)
    return model


def _tp_ready(model: nn.Module, tp: int) -> nn.Module:
    if not model.tp_plan:
        raise ValueError(f"transformers has no tensor-parallel plan for {type(model).__name__}; use --tp 1")
    return model


def tp_random_model(preset: presets.Preset, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                    tp: int, overrides: dict[str, Any] | None = None, seed: int = WEIGHTS_SEED) -> nn.Module:  # fmt: skip
    """This rank's shard of random_model's weights under transformers' tensor-parallel plan (torchrun with tp
    ranks). Each weight is drawn whole on the device from its own generator, as random_model draws it, and
    only this rank's slice is kept: the shards of all ranks make exactly the tp=1 model."""
    from accelerate import init_empty_weights
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, distribute_tensor
    from transformers import AutoModelForCausalLM
    from transformers.distributed.tensor_parallel import apply_tensor_parallelism

    config = hf_config(preset, overrides)
    with torch.device(device), init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    _tp_ready(model, tp)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied_head = out_emb is not None and bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    # Names and kinds before sharding (sharding replaces parameters): a tied head draws as the embedding.
    source: dict[int, tuple[str, str]] = {}
    for mname, module in model.named_modules():
        for pname, p in module._parameters.items():
            if p is not None and id(p) not in source:
                source[id(p)] = (f"{mname}.{pname}" if mname else pname, _kind(mname, pname, p, tied_head))
    plan: dict[tuple[str, str], tuple[str, str]] = {}
    for mname, module in model.named_modules():
        for pname, p in module._parameters.items():
            if p is not None:
                src = in_emb.weight if tied_head and module is out_emb and pname == "weight" else p
                plan[(mname, pname)] = source[id(src)]
    mesh = init_device_mesh(device.type, (tp,))
    apply_tensor_parallelism(model, mesh)
    model._tp_size, model._device_mesh = tp, mesh  # what from_pretrained(distributed_config=...) sets
    for mname, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None or not (p.to_local() if isinstance(p, DTensor) else p).is_meta:
                continue
            name, kind = plan[(mname, pname)]
            full = _fill(torch.empty(p.shape, dtype=dtype, device=device), name, kind, seed)
            if isinstance(p, DTensor):
                shard = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
                local = shard.to_local().clone()  # a copy: the whole tensor is freed now
                t = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                       stride=shard.stride())  # fmt: skip
                del shard
            else:
                t = full
            module._parameters[pname] = nn.Parameter(t, requires_grad=False)
            del full
    for name, b in model.named_buffers():
        if b.device.type == "meta":
            raise RuntimeError(f"buffer {name} was left on the meta device")
    model.eval()
    return model


def tp_checkpoint_model(model_dir: str, dtype: torch.dtype, attn_implementation: str, tp: int,
                        overrides: dict[str, Any] | None = None) -> nn.Module:  # fmt: skip
    """This rank's shard of a checkpoint: transformers reads only its slices (the process group exists)."""
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn_implementation,
                                                 distributed_config=DistributedConfig(tp_size=tp),
                                                 **(overrides or {}))  # fmt: skip
    model.eval()
    return _tp_ready(model, tp)


def checkpoint_model(model_dir: str, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                     quant: str | None = None, double_quant: bool = False,
                     overrides: dict[str, Any] | None = None) -> nn.Module:  # fmt: skip
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn_implementation, **(overrides or {}))
    if quant in ("int8", "nf4", "fp4"):
        from transformers import BitsAndBytesConfig

        if quant == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_compute_dtype=dtype,
                bnb_4bit_use_double_quant=double_quant,
            )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(model_dir, device_map=str(device), **kwargs)
    elif quant == "gptq":
        qc = _read_config(model_dir).get("quantization_config") or {}
        if qc.get("quant_method") != "gptq":
            raise ValueError(f"{model_dir} is not a GPTQ checkpoint (its config.json has no quant_method gptq); "
                             "give a GPTQ model directory, or use --quant int8/nf4/fp4")  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(model_dir, device_map=str(device), **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(device)
    model.eval()
    _bnb_cpu_packing_off(model, double_quant)
    return model


def _bnb_cpu_packing_off(model: nn.Module, double_quant: bool) -> None:
    """bitsandbytes 0.50 repacks 4-bit weights for AVX512-BF16 CPUs on the first forward, and the repack
    breaks on double-quantized constants ("shape [64, 1] is invalid for input of size 96"): keep its
    plain CPU kernel for those layers. The flag exists only on such CPUs' bitsandbytes builds."""
    if not double_quant:
        return
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def _read_config(model_dir: str) -> dict[str, Any]:
    from pathlib import Path

    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _param_bytes(p: torch.Tensor) -> int:
    n = p.numel() * p.element_size()
    qs = getattr(p, "quant_state", None)  # bitsandbytes 4-bit: block scales live beside the packed weight
    if qs is not None:
        n += qs.absmax.numel() * qs.absmax.element_size()
        if getattr(qs, "state2", None) is not None:
            n += qs.state2.absmax.numel() * qs.state2.absmax.element_size() + qs.state2.code.numel() * 4
    scb = getattr(p, "SCB", None)  # bitsandbytes int8: one scale per row
    if scb is not None:
        n += scb.numel() * scb.element_size()
    return n


def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of all weights, bytes one decode step reads): the latter leaves out embedding tables that
    are only indexed (input and position embeddings not tied to the output head)."""
    total = sum(_param_bytes(p) for p in model.parameters())
    head = model.get_output_embeddings()
    head_w = head.weight if head is not None else None
    indexed = sum(_param_bytes(m.weight) for m in model.modules()
                  if isinstance(m, nn.Embedding) and m.weight is not head_w)  # fmt: skip
    return total, total - indexed


def main(argv: list[str]) -> int:
    for name in argv or presets.names():
        total, linear = count_params(presets.load(name))
        print(json.dumps({"name": name, "params": total, "linear_params": linear}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
