"""The HF transformers engines, declared without importing torch: generate, pipeline, torch.compile, and the
shared-prefix family (no sharing, prefix KV copied, Hydragen, the attention-free bound)."""

from __future__ import annotations

from engines.adapters.hf import options
from engines.base import Availability, EngineInfo
from engines.study.speculation import SPEC_PATTERNS


def _rules(run, device: str) -> Availability:
    quant = None if run.quant in (None, "none") else run.quant
    return options.rules(run.engine, run.precision, run.attention, quant, run.options, device)


# quant "none" first: the default, and `--quant none,int8,nf4` compares against unquantized in one study.
AXES = {
    "precision": ("fp32", "bf16", "fp16"),
    "attention": ("sdpa", "eager", "sdpa-math", "sdpa-efficient", "sdpa-flash", "flash_attention_2"),
    "quant": ("none", "int8", "nf4", "fp4", "gptq"),
}
_HF = {"requires": ("torch", "transformers"), "extra": "hf", "rules": _rules, "builds_presets": True}

ENGINES = (
    EngineInfo("hf-generate", "engines.adapters.hf.engine:HFGenerate",
               "transformers AutoModelForCausalLM.generate (the seeds' HF baseline)",
               axes={**AXES, "spec": SPEC_PATTERNS}, tensor_parallel="torchrun",
               speculation_target="engines.adapters.hf.speculative:HFSpeculative", **_HF),
    EngineInfo("hf-pipeline", "engines.adapters.hf.engine:HFPipeline",
               "transformers text-generation pipeline (text in, text out)", axes=AXES, tensor_parallel="torchrun", **_HF),
    EngineInfo("torch-compile", "engines.adapters.hf.engine:TorchCompile",
               "torch.compile of the HF model with a static KV cache; CUDA graphs on a GPU (compile time kept apart)",
               axes=AXES, **_HF),
)  # fmt: skip


def _shared_prefix(name: str, cls: str, summary: str, **capabilities) -> EngineInfo:
    return EngineInfo(name, f"engines.adapters.hf.shared_prefix:{cls}", summary, ("torch", "transformers"), "hf",
                      {"precision": AXES["precision"]}, builds_presets=True, reference="hf-generate",
                      **capabilities)  # fmt: skip


# Listed after every other family's engines (registry.DECLARATIONS): they are the shared-prefix study's.
SHARED_PREFIX = (
    _shared_prefix("hf-noshare", "HFNoShare", "HF, no sharing: full prompts through the shared-prefix engines' decode loop"),
    _shared_prefix("hf-prefix-kv", "HFPrefixKV", "HF, shared prefix prefilled once, its KV cache copied to every sequence"),
    _shared_prefix("hydragen", "Hydragen", "HF Llama with Hydragen attention: shared prefix as one matrix-matrix product",
                   kv_cache="prefix-once"),
    _shared_prefix("noattention", "NoAttention", "HF Llama with attention skipped: the shared-prefix upper bound",
                   kv_cache="none", lossy=True),
)  # fmt: skip
