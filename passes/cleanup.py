"""The `cleanup` pipeline: exact simplifications every target wants before fusion."""

# Order matters: identities and casts first so folding sees through them; infer-shapes binds and
# sharpens shapes, fold-constants (which repeats itself until nothing more folds) turns shape
# bookkeeping into constants; deduplicated constants let cse merge the nodes that read them; casts
# whose types only became known after folding go last, then dce drops what is dead.
PIPELINES = [
    ("cleanup",
     "remove-identity,simplify-casts,infer-shapes,fold-constants,dedup-constants,cse,simplify-casts,dce",
     "exact cleanup: identities, casts, shape inference, constant and shape folding, dedup, CSE, DCE"),
]
