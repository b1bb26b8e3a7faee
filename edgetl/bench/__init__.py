"""`edgetl bench`: accuracy and latency of the original model and of every exported artifact, side by side,
and a latency/accuracy regression gate for CI.

Why it is built this way:

- Accuracy goes through the code path of `edgetl eval` (torchvision preprocessing, the same validation
  split, ``evaluate_runner``), once per artifact. Without PyTorch (the Jetson runtime image) the deploy
  preprocessing of `edgetl predict` (``Preprocess.to_array``, within one grey level of torchvision) is
  used instead, and the report says which.
- Latency: warm-up first; fixed thread counts (ONNX Runtime intra-op threads, ``torch.set_num_threads``);
  timed inputs rotate over several real, preprocessed validation batches; the garbage collector is off
  while timing (as ``timeit`` does); at least MIN_SAMPLES samples and ``--min-seconds`` per row unless
  ``--iters`` fixes the count, so p99 is not just the maximum of a handful. PyTorch on CUDA is timed
  with CUDA events on device-resident inputs; the other backends with the host clock around
  ``runner.run`` (for TensorRT that includes the host-device copies, what an application sees).
- End-to-end latency (decode + preprocess + infer, from image files) is measured separately, with the
  deploy preprocessing that `edgetl predict` uses.
- Rounds: every row is timed once per round, rows interleaved and their order rotated between rounds,
  so a burst of noise from a neighbour hits all rows rather than one. p50 is the median of the rounds'
  medians. The gate judges each row on its fastest round's median against the baseline's fastest round:
  a neighbour's work only ever adds time, so the best of several rounds is the steadiest estimate of
  what the code costs; and it must also be slower than every baseline round, since a change inside the
  baseline's own round-to-round spread is noise. A row that looks regressed is timed again, up to
  RECHECKS times as many rounds more, and judged on all of them: on a shared machine a gate that flaps
  is a gate people learn to ignore.
- Contention: the CPU time other processes (and the hypervisor, as steal) took while the rows were
  timed is read from /proc/stat and reported, so a slow row on a busy machine says why.
- Rows are matched to a baseline by (artifact file name, backend, precision, batch size, device) and
  only when the machine fingerprint (CPU model and the ISA flags that pick kernels, usable cores,
  threads, GPUs, Jetson power mode and clock lock) is the same: latencies from different machines are
  not comparable, and two EPYCs of one model name, one with AVX-512 VNNI and one without, are two machines.

Torch-free at import: PyTorch is imported only for the ``torch`` backend and the eval preprocessing path.

Modules: `config` (options), `plan` (what to run), `inputs` (images), `timing`, `environment` (the
fingerprint), `session` (one run, the report), `gate` (the regression gate), `report` (table, markdown).
"""
