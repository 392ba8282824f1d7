"""Every built-in target's default pipeline, in one place so that passes landing later are added here.

The fusion passes ask the target what it accepts (`ctx.supports(op, domain)`) and pick the form it runs
best, so the same fusion list serves every backend. Targets that compute in half end with vidcc's
precision passes: tag-precision decides per node (norm statistics, softmax, timestep sin/cos, large
activations stay fp32; calibrated on the compile's sample inputs), materialize-precision retypes the
graph with explicit casts at the boundaries and fp32 graph inputs/outputs.
"""

CLEANUP = "cleanup"
# remove-noops last: a fused op's own layout ops meet their readers' (MultiHeadAttention's [B, H, S, D]
# view cancels against the head merge that read Attention-23) and collapse
FUSIONS = ("fuse-groupnorm,fuse-layernorm,fuse-rmsnorm,fuse-gelu,fuse-silu,fuse-attention,fuse-single-key-attention,"
           "temporal-conv-2d,remove-noops,dce")
STANDARD = f"{CLEANUP},{FUSIONS}"
# TensorRT has no NonZero: token-routed MoE dispatch becomes dense first (a no-op without one; before
# cleanup, which then folds and merges its shape bookkeeping: 1916 vs 2225 layers on moe-dit:tiny)
TRT = f"dense-moe-dispatch,{STANDARD}"
FP16 = f"{STANDARD},tag-precision{{dtype=fp16}},materialize-precision"
BF16 = f"{STANDARD},tag-precision{{dtype=bf16}},materialize-precision"

DEFAULT = {
    "ort": f"{CLEANUP},fuse",  # every fusion: the ORT CPU-only ones (unpacking, BiasGelu) pay there
    "ort-cuda": STANDARD,  # channels-last and BiasSplitGelu are measured in fp16 only (`-p temporal-conv-2d{force=true},fuse-bias-split-gelu,layout-nhwc` adds them)
    "ort-cuda-fp16": f"{STANDARD},temporal-conv-2d{{force=true}},fuse-bias-split-gelu,fuse-bias-gelu{{force=true}},"
                     "layout-nhwc,fuse-skip-groupnorm,fuse-skip-bias,tag-precision{dtype=fp16},materialize-precision",
    # ort-cuda-fp16's pipeline less what ORT's CUDA EP has no bf16 kernel for (NhwcConv, GroupNorm,
    # SkipGroupNorm, BiasSplitGelu, BiasAdd: float/float16 only, targets/_ort_bf16.py): no layout-nhwc
    # (nor the temporal-conv-2d it needs), fuse-skip-groupnorm or fuse-bias-split-gelu; fuse-skip-bias
    # emits SkipLayerNormalization only (the target does not accept BiasAdd)
    "ort-cuda-bf16": f"{STANDARD},fuse-bias-gelu{{force=true}},fuse-skip-bias,tag-precision{{dtype=bf16}},"
                     "materialize-precision",
    "tvm-llvm": STANDARD,
    "tvm-llvm-fp16": FP16,
    "tvm-cuda": STANDARD,
    "tvm-cuda-fp16": FP16,
    "tvm-cuda-bf16": BF16,
    "trt-fp32": TRT,
    "trt-fp16": f"{TRT},tag-precision{{dtype=fp16}},materialize-precision",
    "trt-bf16": f"{TRT},tag-precision{{dtype=bf16}},materialize-precision",
}
