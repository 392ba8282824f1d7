"""The `cleanup` pipeline: exact simplifications every target wants before fusion."""

# Order matters: identities and casts first so folding sees through them; infer-shapes binds and
# sharpens shapes; fold-constants (which repeats itself until nothing more folds) turns shape
# bookkeeping into constants; dce drops the Shape readers folding left dead, so that remove-noops
# sees single readers when it drops the Expand/Reshape/Slice/x*1 that folding exposed as no-ops (TVM's
# importer fails on a no-op Expand of a data-dependent shape) and collapses Transpose pairs, which
# lets scatter-rows see whole ScatterND chains (Wan's rotary embedding); deduplicated
# constants let cse merge the nodes that read them; casts whose types only became known after
# folding go last, then dce drops what is dead.
PIPELINES = [
    ("cleanup",
     "remove-identity,simplify-casts,infer-shapes,fold-constants,dce,remove-noops,scatter-rows,remove-noops,dedup-constants,cse,simplify-casts,dce",
     "exact cleanup: identities, casts, shape inference, constant and shape folding, no-ops, dedup, CSE, DCE"),
]
