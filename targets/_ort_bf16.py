"""Which ops ONNX Runtime's CUDA EP computes in bfloat16: its kernel registrations, as one table.

A node tagged bf16 whose op has no BFloat16 CUDA kernel would be placed on the CPU EP (which has almost
no bf16 kernels, so the session fails) or run there slowly; tag-precision keeps every op not in this
table fp32 (`Target.low_kernels`), and the ort-cuda-bf16 target accepts only the com.microsoft ops in it.

Sources (microsoft/onnxruntime, main at the time of reading; ORT 1.31 is not older):
- docs/OperatorKernels.md, "Operators implemented by CUDAExecutionProvider" (generated from the
  registered kernels by tools/python/gen_opkernel_doc.py): the `tensor(bfloat16)` entries of each op's
  type constraints and the opset range they start at. Every bf16 range there runs on to the newest
  opset, so a first opset is enough;
- onnxruntime/contrib_ops/cuda/cuda_contrib_kernels.cc: the com.microsoft registrations, e.g.
  `CUDA_MS_OP_TYPED_CLASS_NAME(1, BFloat16, FastGelu)`, `(1, BFloat16_BFloat16, MultiHeadAttention)`,
  `(1, BFloat16, SkipLayerNormalization)`, `(1, BFloat16, FusedMatMul)`, `(1, BFloat16, RotaryEmbedding)`;
  BiasSplitGelu, BiasAdd and NhwcConv are registered for `float` and `MLFloat16` only, FusedConv for `float`;
- onnxruntime/contrib_ops/cuda/diffusion/group_norm.cc: `#define GROUP_NORM_TYPES float, MLFloat16`
  (GroupNorm and SkipGroupNorm: no bf16).
No BFloat16 CUDA kernel at any opset (so they stay fp32): ReduceMean, ReduceMax/Min/Prod/L1/L2/LogSum*,
Reciprocal, Clip, Pad, Resize, Equal/Less/Greater, Sin, Cos, Log, LeakyRelu, Einsum, ConvTranspose,
InstanceNormalization, BatchNormalization, GroupNormalization (no CUDA kernel in any type: ORT expands its
function body), MaxPool, GlobalAveragePool, DepthToSpace, TopK, ArgMax, CumSum, Range.
"""

from __future__ import annotations

from vidcc.target import KernelTable

MS = "com.microsoft"

# standard ops: first opset with a bf16 CUDA kernel
_ONNX = {
    "Abs": 13, "Add": 13, "Attention": 23, "AveragePool": 22, "Cast": 13, "Concat": 1, "Constant": 1,
    "ConstantOfShape": 9, "Conv": 22, "Div": 13, "Dropout": 13, "Erf": 13, "Exp": 13, "Expand": 8,
    "Flatten": 1, "Gather": 1, "GatherElements": 11, "GatherND": 13, "Gelu": 20, "Gemm": 13,
    "HardSigmoid": 22, "HardSwish": 22, "Identity": 1, "IsInf": 20, "IsNaN": 13, "LayerNormalization": 1,
    "MatMul": 13, "Max": 6, "Min": 6, "Mod": 13, "Mul": 13, "Neg": 13, "Pow": 15, "RMSNormalization": 23,
    "ReduceSum": 13, "Relu": 13, "Reshape": 1, "RotaryEmbedding": 23, "ScatterElements": 11, "ScatterND": 11,
    "Shape": 1, "Sigmoid": 13, "Sign": 13, "SimplifiedLayerNormalization": 1, "Size": 1, "Slice": 1,
    "Softmax": 13, "Split": 2, "Sqrt": 13, "Squeeze": 1, "Sub": 13, "Sum": 6, "Tanh": 13, "Tile": 13,
    "Transpose": 1, "Trilu": 14, "Unsqueeze": 1, "Where": 16,
}
# com.microsoft ops registered for BFloat16 (version 1) that vidcc's fusions may emit
CONTRIB = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "FusedMatMul", "BiasGelu", "FastGelu",
           "Gelu", "QuickGelu", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "RotaryEmbedding",
           "MatMulNBits")

CUDA_BF16 = KernelTable({**{("", op): v for op, v in _ONNX.items()}, **{(MS, op): 1 for op in CONTRIB}},
                        others=False, source="ORT's CUDA EP registrations (targets/_ort_bf16.py)")
