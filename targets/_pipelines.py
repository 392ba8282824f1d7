"""Every built-in target's default pipeline, in one place so that passes landing later are added here.

The fusion passes ask the target what it accepts (`ctx.supports(op, domain)`) and pick the form it runs
best, so the same fusion list serves every backend. Targets that compute in half will put vidcc's
precision passes (`tag-precision{dtype=...},materialize-precision`) here once they exist; until then
their build converts the graph with the stopgap in targets/_fp16.py.
"""

CLEANUP = "cleanup"
FUSIONS = "fuse-groupnorm,fuse-layernorm,fuse-rmsnorm,fuse-gelu,fuse-silu,fuse-attention"
STANDARD = f"{CLEANUP},{FUSIONS}"

DEFAULT = {
    "ort": STANDARD,
    "ort-cuda": STANDARD,
    "ort-cuda-fp16": STANDARD,
    "tvm-llvm": STANDARD,
    "tvm-llvm-fp16": STANDARD,
    "tvm-cuda": STANDARD,
    "tvm-cuda-fp16": STANDARD,
    "trt-fp32": STANDARD,
    "trt-fp16": STANDARD,
    "trt-bf16": STANDARD,
}
