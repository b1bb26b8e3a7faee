"""`edgetl finetune`: its options (`config`, saved in run.json), the loop with checkpoints, resume and
signals (`loop`), multi-GPU plumbing (`distributed`), the CPU convolution kernels (`cpu_kernels`) and
the frozen-backbone feature cache (`features`). Importing the package imports nothing."""
