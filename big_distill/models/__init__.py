"""Model families. Each family is one module, `big_distill/models/<name>.py`.

A config names a model by its module (`config.student_name = "bit"`,
`config.t1_name = "vit"`) and gives its keyword arguments (`config.student`,
`config.t1`). The trainer, evaluate, benchmark, precompute and export code
know nothing else about a family: they use only what this contract lists.

The model contract
==================

A family module provides exactly these five things.

1. `Model(num_classes: int, dtype=jnp.float32, **family_kwargs)`: a flax
   linen Module. Every family kwarg has a default, so that
   `Model(num_classes=K)` builds the family's reference size.
   - Called as `model.apply(variables, images_BHWC, train=bool)`; returns
     `(logits_BK, outputs)`. `logits_BK` is float32 whatever `dtype` is;
     `outputs` is a dict that holds at least `"pre_logits"` (the features
     the head reads).
   - `images_BHWC` is float32 in [-1, 1] at the model's own resolution
     (`config.<name>_res`). A family that was trained on another input
     normalisation converts inside the model, from a kwarg of its own; the
     trainer feeds every model the same range.
   - Parameters are float32 (`param_dtype`); `dtype` is the compute dtype.
   - `variables` is one flax variables dict: `{"params": ...}`, plus
     `{"batch_stats": ...}` for BatchNorm models. With `train=True` and
     `mutable=["batch_stats"]` the running averages are returned updated;
     `train=False` uses them. No collection other than `params` and
     `batch_stats`, and no random numbers: `apply` needs no `rngs`.
   - The classifier is a sub-module named `head` (a Dense layer, kernel
     `(C, K)`, bias `(K,)`).
2. `load(template, path, *, head_mismatch="reinit", model=None)`: the
   weights in `path` as numpy, with the tree structure, shapes and dtypes of
   `template`.
   - `template`: a flax variables dict of numpy or ShapeDtypeStruct leaves
     (a bare params tree is accepted too, and then a bare tree is returned).
   - `path`: a local or remote (`gs://...`) file in any of the family's
     layouts, told apart by the file's keys. A family may accept a suffix,
     such as ViT's `file.npz:img` for one tower of a two-tower file.
   - `head_mismatch`: what to do when the file's head has another class
     count than the model, or no head. `"reinit"` (fine-tuning from a
     pretrained model) keeps the template's head: the trainer passes
     the model's initial values. `"error"` (a teacher, or a model to
     evaluate, whose logits must be this data set's) raises
     `errors.CheckpointError`.
   - `model`: the Model instance the template belongs to, or None. Families
     read settings that shapes do not show from it (BiT's `stem_pool_pad`,
     to warn when a big_vision file meets a "zeros" model).
   - Any other missing, unexpected or mis-shaped array raises
     `errors.CheckpointError` naming the arrays and the model kwargs to check.
3. `save(variables, path, layout=LAYOUTS[0])`: writes an `.npz` that the
   family's other codebases load (the first of the module's `LAYOUTS` is
   the default, and is what `student.npz` is written in), atomically.
   `variables` is a variables dict or a bare params tree.
4. `freeze(model, variables) -> (model, variables)`: a teacher never trains,
   so the family may precompute once what depends only on its weights (BiT:
   the weight standardization of every conv kernel), returning an
   equivalent model and variables with the same logits, to within float32
   rounding. Families with nothing to precompute return their arguments.
   The variables come and go as float32 host (numpy) arrays; the trainer
   casts them to the compute dtype afterwards, once. `freeze(model, None)`
   returns `(frozen model, None)`: the trainer builds the step with the
   frozen model before any weights are read.
5. `locate(init: str) -> str`: the file an init string stands for. A name
   of the family's published checkpoints (ViT: `vit.ZOO`, e.g. `"SigLIP
   B/16 224"`) becomes its path (with any sub-tree suffix); any other string
   comes back unchanged. The trainer checks that the located file can be
   read before anything is built; `load` accepts the name itself too.

And the constant `LAYOUTS`: the names `save` accepts.

What the trainer may assume, and nothing more
---------------------------------------------
- Every model, student or teacher, BatchNorm or not, is carried as one flax
  variables dict (the train state holds the student's as one), so the loss
  and the update have one shape whatever the family; only `variables["params"]` gets gradients and the
  optimizer; the other collections come back from the forward pass.
- Shapes come from `jax.eval_shape` of `model.init` (nothing compiles).
- A teacher is loaded with `head_mismatch="error"`, frozen with `freeze`,
  cast to the compute dtype once, and sharded (large arrays over
  `config.mesh.fsdp`).
- The student's initial weights are the model's `init`, or `load` of
  `config.student_init` with `head_mismatch="reinit"` into them.
- `student.npz` is `save(variables, path)` in the family's default layout.
"""
