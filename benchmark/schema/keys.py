"""Every result key, declared once. Adding a metric: declare it here, write it in its probe.

The order of declaration is the column order of ``results.csv`` and of the report's table;
``results/README.md``'s key tables are generated from this file
(``python -m benchmark.schema --write results/README.md``; a test keeps them in sync).
Keys marked with an issue number are written by work in progress and stay null until then.
"""

from __future__ import annotations

from benchmark.schema.key import Key

KEYS: list[Key] = []


def _add(name: str, group: str, description: str, **kw) -> None:
    KEYS.append(Key(name, group, description, **kw))


# One declaration per key, laid out as a table: the formatter would put every argument on a
# line of its own.
# fmt: off

# -- identity and outcome ------------------------------------------------------------------
_add("job", "identity", "the job's folder, relative to the sweep folder (its overrides)",
     kind="text", where="table", table=True)
_add("label", "identity", "display name: `Faster R-CNN w/ ResNet-101, 600 px, 50 prop., "
     "stride 8`", kind="text", where="table", short="configuration", table=True)
_add("status", "identity", "`ok`, `skipped` or `failed` (above)", kind="text")
_add("error", "identity", "why a job was skipped or failed; null when ok", kind="text")
_add("meta_arch", "identity", "meta-architecture option (`ssd`, `dssd`, `refinedet`, "
     "`faster_rcnn`, `rfcn`, `torchvision`)", kind="text", short="meta-architecture")
_add("extractor", "identity", "feature-extractor option (`resnet18`, `mobilenet_v1`...); for "
     "`torchvision` the builder's backbone", kind="text", short="extractor")
_add("neck", "identity", "single-shot context module as the `neck=` group names it (`none`, "
     "`ssd_extra`, `dssd`, `tcb`, `refinenet`), reported by the model; empty for detectors "
     "without one (older results: read from the config)", kind="text", short="neck",
     table=True)
_add("image_size", "identity", "input resolution (square side, or shorter side for two-stage "
     "detectors)", unit="px", kind="integer", label="Input resolution (px)", short="size")
_add("num_proposals", "identity", "test-time proposals per image, reported by the model "
     "(`meta_arch.num_proposals`); empty for detectors without proposals", unit="count",
     kind="integer", label="Number of proposals (test time)", short="proposals",
     lookup="config.meta_arch.num_proposals")
_add("output_stride", "identity", "stride of the deepest extractor map the built detector "
     "computes (Huang et al.'s output stride: 16, or 8 in atrous mode, for the two-stage "
     "models; read from the module; `extractor.output_stride` for older results)", unit="px", kind="integer", short="stride",
     lookup="config.extractor.output_stride")
_add("dataset", "identity", "`data.name`", kind="text")
_add("family", "identity", "`single-shot` or `two-stage`, declared by the model class (for "
     "`torchvision`, of the detector it wraps)", kind="text", short="family")
_add("meta_arch_name", "identity", "the meta-architecture's display name, declared by the "
     "model class (`Faster R-CNN`, `SSDlite (torchvision)`)", kind="text")
_add("uses_proposals", "identity", "whether a number of proposals applies (declared by the "
     "model class)", unit="bool", kind="bool")
_add("reference_model", "identity", "`meta_arch=torchvision` only: the torchvision builder",
     kind="text")
_add("resize_mode", "identity", "how images are resized, declared by the model class: "
     "`square` (single-shot) or `shorter_side` (two-stage)", kind="text")
_add("input_shape", "identity", "`[H, W]` a typical validation image has after resizing: "
     "`[M, M]` for `square`; for `shorter_side` the upper median by area of the resized "
     "validation images (e.g. `[600, 800]` for 640x480 photos at M = 600). `num_anchors` and "
     "the memory probes use it", unit="px", kind="list")
_add("seed", "identity", "random seed of data order and initialization", kind="integer")
_add("config_fingerprint", "identity", "the job's identity: SHA-256 of the canonical JSON "
     "of `config` without the keys that cannot change a number (`progress`, `force`, "
     "`results_root`, `sweep_name`, `timing_lock`, `timing_lock_dir`, `timing_pause_work`, "
     "`train.resume`, `train.checkpoint_every`; `benchmark/identity.py`). A job is skipped "
     "only when its folder's result has the same one. `git_sha` is not part of it",
     kind="text")
_add("config", "identity", "the job's whole resolved config (Hydra's own node excluded)",
     kind="object")
_add("checkpoint", "identity", "`train.checkpoint` when the model was loaded instead of "
     "trained", kind="text")
_add("job_seconds", "identity", "wall time of the job (building, training, evaluation, "
     "measurement)", unit="s", short="job time")

# -- accuracy (COCO evaluation with pycocotools, validation split) ----------------------------
# The twelve COCOeval.stats in pycocotools' summarize() order (benchmark.evaluate zips them).
_COCO = [
    ("map", "AP@[.5:.95], 100 detections per image (COCO's primary metric)",
     "mAP@[.5:.95]", "AP"),
    ("map_50", "AP at IoU 0.5", "mAP@.5", "AP50"),
    ("map_75", "AP at IoU 0.75", "mAP@.75", "AP75"),
    ("map_small", "AP on small objects (area < 32^2 px at the evaluated size); the table "
     "turns COCO's -1 (no such objects) into NaN", "mAP, small objects", "AP small"),
    ("map_medium", "AP on medium objects (32^2-96^2)", "mAP, medium objects", "AP medium"),
    ("map_large", "AP on large objects (> 96^2)", "mAP, large objects", "AP large"),
    ("mar_1", "AR with 1 detection per image", "AR@1", "AR1"),
    ("mar_10", "AR with 10 detections per image", "AR@10", "AR10"),
    ("mar_100", "AR with 100 detections per image", "AR@100", "AR100"),
    ("mar_small", "AR on small objects", "AR, small objects", "AR small"),
    ("mar_medium", "AR on medium objects", "AR, medium objects", "AR medium"),
    ("mar_large", "AR on large objects", "AR, large objects", "AR large"),
]
_IN_TABLE = {"map", "map_50", "map_75", "map_small", "map_large"}
for _name, _meaning, _label, _short in _COCO:
    _add(_name, "accuracy", _meaning, unit="0-1", fmt="percent", label=_label, short=_short,
         accuracy=True, interval=(f"{_name}_ci_low", f"{_name}_ci_high"), probe="cocoeval",
         table=_name in _IN_TABLE, summary=_name in ("map", "map_50"))
for _name, _meaning, _label, _short in _COCO:
    _add(f"{_name}_ci_low", "accuracy", f"lower end of the 95 % bootstrap interval of "
         f"`{_name}`", unit="0-1", fmt="percent", short=f"{_short} CI low", probe="bootstrap")
    _add(f"{_name}_ci_high", "accuracy", "upper end of that interval", unit="0-1",
         fmt="percent", short=f"{_short} CI high", probe="bootstrap")
_add("bootstrap_samples", "accuracy", "`eval.bootstrap`: resamples of the validation images "
     "behind the intervals (0: intervals off, null)", unit="resamples", kind="integer",
     probe="bootstrap")
_add("bootstrap_method", "accuracy", "`percentile` (2.5th and 97.5th percentiles of the "
     "resampled metric); null when off", kind="text", probe="bootstrap")
_add("bootstrap_confidence", "accuracy", "`eval.confidence` (0.95)", fmt="fixed3",
     probe="bootstrap")
_add("bootstrap_seconds", "accuracy", "wall time of the bootstrap", unit="s",
     probe="bootstrap")

# -- latency and throughput (batch 1, eval mode, real validation images) ----------------------
_add("latency_ms", "latency", "median end-to-end time per call (preprocess + predict + "
     "postprocess when `bench.include_postprocess`)", unit="ms",
     label="Latency per image, batch 1, end to end (ms, median)", short="latency", cost=True,
     axis="latency", interval=("latency_ms_ci_low", "latency_ms_ci_high"), probe="latency",
     table=True, summary=True)
_add("latency_ms_ci_low", "latency", "lower end of the 95 % interval of the median (order "
     "statistics; null below 6 calls)", unit="ms", short="latency CI low", probe="latency")
_add("latency_ms_ci_high", "latency", "upper end of that interval", unit="ms",
     short="latency CI high", probe="latency")
_add("latency_ms_p90", "latency", "90th percentile; null below 10 timed calls", unit="ms",
     label="Latency per image, batch 1, end to end (ms, p90)", short="p90", cost=True,
     probe="latency", table=True)
_add("latency_ms_p99", "latency", "99th percentile; null below 100 timed calls", unit="ms",
     label="Latency per image, batch 1, end to end (ms, p99)", short="p99", cost=True,
     probe="latency")
_add("latency_ms_p90_note", "latency", "why `latency_ms_p90` is null (too few timed calls), "
     "else null", kind="text", probe="latency")
_add("latency_ms_p99_note", "latency", "why `latency_ms_p99` is null, else null", kind="text",
     probe="latency")
_add("latency_ms_mean", "latency", "mean", unit="ms", short="mean", probe="latency")
_add("latency_ms_std", "latency", "standard deviation", unit="ms", short="sd", probe="latency")
_add("latency_ms_min", "latency", "fastest call", unit="ms", short="min", probe="latency")
_add("cold_start_ms", "latency", "the first call of the measurement (lazy initialization, "
     "kernel selection)", unit="ms", short="cold start", probe="latency")
_add("preprocess_ms", "latency", "median of the normalize + pad stage", unit="ms",
     short="preprocess", probe="latency")
_add("predict_ms", "latency", "median of the network stage (what GMACs count; includes the "
     "RPN for two-stage)", unit="ms", label="Network time per image, batch 1 (ms, median)",
     short="network", cost=True, probe="latency", table=True)
_add("postprocess_ms", "latency", "median of decode + score threshold + NMS", unit="ms",
     short="postprocess", probe="latency")
_add("timing_n", "latency", "timed calls behind the percentiles (`bench.num_images` to "
     "`bench.max_images`, more while under `bench.min_seconds`)", unit="calls",
     kind="integer", label="timed images per configuration", probe="latency", protocol=True)
_add("latency_batch_size", "latency", "images per timed call (`bench.batch_size`, 1)",
     unit="images", kind="integer", label="latency batch size", probe="latency",
     protocol=True)
_add("latency_warmup", "latency", "untimed calls before timing", unit="calls",
     kind="integer", label="warm-up calls before timing", probe="latency", protocol=True)
_add("latency_includes_postprocess", "latency", "whether `latency_ms` includes postprocess",
     unit="bool", kind="bool", label="latency includes postprocess (decode + NMS)",
     probe="latency", protocol=True)
_add("input_size", "latency", "`[H, W]` of the timed inputs", unit="px", kind="list",
     probe="latency")
_add("throughput_ips", "latency", "images per second at `throughput_batch_size` "
     "(postprocess included)", unit="images/s", label="Throughput (images/s)",
     short="throughput", probe="throughput")
_add("throughput_batch_size", "latency", "batch of the throughput measurement",
     unit="images", kind="integer", label="throughput batch size", probe="throughput",
     protocol=True)

# -- FLOPs and roofline ----------------------------------------------------------------------
_add("gmacs", "flops", "10^9 multiply-adds per image, `predict` only, counted with "
     "`FlopCounterMode` (+ RoIAlign formulas)", unit="GMACs",
     label="Multiply-adds per image (GMACs)", short="multiply-adds", cost=True, axis="gmacs",
     probe="flops", table=True, summary=True)
_add("gmacs_conv", "flops", "the convolutions' share of `gmacs` (`aten.convolution`): what "
     "torchvision's published `_ops` count for its MobileNet Faster R-CNNs", unit="GMACs", short="conv GMACs", cost=True,
     probe="flops")
_add("gmacs_extractor", "flops", "the part of `gmacs` run inside the feature extractor's "
     "modules (the model's `cost_parts()`, forward hooks on the counter's running total). For "
     "two-stage detectors the trunk up to the cropped map: the last stage, run on each crop, "
     "counts as head; for `torchvision` the backbone's `body` (SSD: `features`)",
     unit="GMACs", label="Feature-extractor multiply-adds per image (GMACs)",
     short="extractor GMACs", cost=True, probe="flops")
_add("gmacs_neck", "flops", "the part of `gmacs` run inside the neck: the bottom-up extra "
     "layers and the top-down context module (DSSD deconvolution, TCB, RefineNet) of "
     "single-shot detectors; torchvision's FPN or SSD extra layers; 0 for detectors without "
     "one (our Faster R-CNN and R-FCN)", unit="GMACs", short="neck GMACs", probe="flops")
_add("gmacs_head", "flops", "the rest of `gmacs` (`gmacs - gmacs_extractor - gmacs_neck`): "
     "the prediction heads (SSD/DSSD heads, RefineDet's ARM and ODM); for two-stage detectors "
     "the RPN, RoIAlign and the box classifier with the extractor's last stage, on "
     "`flops_num_proposals` crops", unit="GMACs", short="head GMACs", probe="flops")
_add("gmacs_by_op", "flops", "`gmacs` split by operator", unit="GMACs", kind="object",
     probe="flops")
_add("flops_uncounted_ops", "flops", "contraction-like operators without a formula "
     "(non-empty: `gmacs` is a lower bound)", kind="list", probe="flops")
_add("flops_num_proposals", "flops", "proposals per image the two-stage count used",
     unit="count", kind="integer", label="proposals when counting two-stage FLOPs",
     probe="flops", protocol=True)
_add("flops_input_size", "flops", "`[H, W]` of the counted input", unit="px", kind="list")
_add("peak_gemm_gflops", "flops", "measured peak of a large GEMM on this device (cached per "
     "machine)", unit="GFLOP/s", probe="roofline")
_add("peak_conv_gflops", "flops", "measured peak of a large 3x3 convolution",
     unit="GFLOP/s", probe="roofline")
_add("achieved_gflops", "flops", "`2 * gmacs / predict_ms`: the network's compute rate",
     unit="GFLOP/s", short="achieved", probe="roofline")
_add("peak_fraction", "flops", "`achieved_gflops / peak_conv_gflops`", unit="0-1",
     fmt="percent", short="of peak", probe="roofline")

# -- memory ----------------------------------------------------------------------------------
_add("peak_mem_mb", "memory", "inference peak: CUDA `max_memory_allocated`; CPU peak-RSS "
     "increase of a fresh process (excludes weights)", unit="MiB",
     label="Peak inference memory, batch 1 (MiB)", short="peak memory", cost=True,
     axis="memory", probe="memory", table=True, summary=True)
_add("peak_mem_reserved_mb", "memory", "CUDA `max_memory_reserved`; null on CPU", unit="MiB",
     probe="memory")
_add("train_peak_mem_mb", "memory", "the same for one training step at "
     "`train_mem_batch_size`", unit="MiB", label="Peak training-step memory (MiB)",
     short="training memory", cost=True, probe="memory", table=True)
_add("train_peak_mem_reserved_mb", "memory", "CUDA reserved memory of the training step",
     unit="MiB", probe="memory")
_add("train_mem_batch_size", "memory", "the batch `train_peak_mem_mb` is for "
     "(`bench.train_batch_size`, else `train.batch_size`)", unit="images", kind="integer",
     probe="memory")
_add("mem_budget_mb", "memory", "what one memory probe could allocate: "
     "`bench.memory_max_fraction` of the free memory (CPU `MemAvailable`, CUDA free); null "
     "when unknown (then unbounded)", unit="MiB", probe="memory")
_add("peak_mem_batch_size", "memory", "the batch `peak_mem_mb` is for (`bench.batch_size`)",
     unit="images", kind="integer", probe="memory")
_add("peak_mem_probe_batch_size", "memory", "the largest batch the inference probe actually "
     "ran", unit="images", kind="integer", probe="memory")
_add("train_mem_probe_batch_size", "memory", "the largest batch the training-step probe "
     "actually ran (below `train_mem_batch_size` when extrapolated or stopped)",
     unit="images", kind="integer", probe="memory")
_add("peak_mem_source", "memory", "`measured` (run at the batch it is for), `extrapolated` "
     "(that batch exceeded the budget: a line through two smaller batches that fit), or null "
     "(no number; see the note)", kind="text", probe="memory")
_add("train_mem_source", "memory", "the same for `train_peak_mem_mb`", kind="text",
     probe="memory")
_add("peak_mem_note", "memory", "null when measured; otherwise the two batches of an "
     "extrapolation, or why there is no number (over the budget with no second batch that "
     "fits, `bench.memory_extrapolate=false`, or the hard memory limit stopped the probe)",
     kind="text", probe="memory")
_add("train_mem_note", "memory", "the same for `train_peak_mem_mb`", kind="text",
     probe="memory")
_add("peak_mem_method", "memory", "which definition applies: `cuda_max_memory_allocated`, "
     "`cpu_peak_rss_increase_fresh_process` (exact), `cpu_peak_rss_increase` (in-process, "
     "`bench.memory_fresh_process=false`: approximate); `_no_reset` when the kernel's peak "
     "could not be reset", kind="text", label="memory measurement", probe="memory",
     protocol=True)
_add("cold_start_fresh_process_ms", "memory", "CPU: first inference call in a brand-new "
     "process", unit="ms", probe="memory")

# -- data and model size ----------------------------------------------------------------------
_add("num_classes", "data", "object classes, background excluded", kind="integer")
_add("class_names", "data", "class names in label order", kind="list")
_add("data_stats", "data", "per split (`train`, `val`): `images`, `boxes` (target boxes kept "
     "at the model's input size), `negatives` (images without a box), `clipped` and `dropped` "
     "by reason: `degenerate`, `outside_image`, `crowd` (COCO `iscrowd`, VOC `difficult`), "
     "`degenerate_after_resize` (below 1 px at the input size; in `val` such boxes and crowd "
     "ones stay in the COCO ground truth, docs/bad_input.md)", kind="object")
_add("data_warnings", "data", "problems with the data that leave the job ok but change what "
     "its numbers mean: a class with validation boxes but no training box, validation boxes "
     "below 1 px at the input size; also in the report's Data warnings section. Empty list "
     "when none", kind="list")
_add("params", "data", "all parameters", unit="count", kind="integer", label="Parameters",
     short="parameters", cost=True, fmt="count", table=True)
_add("params_trainable", "data", "parameters with `requires_grad`", unit="count",
     kind="integer", fmt="count")
_add("num_anchors", "data", "anchors / default boxes per image at `input_shape` (the "
     "\"#Boxes\" of the DSSD and RefineDet tables; RPN anchors for two-stage detectors)",
     unit="count", kind="integer", short="anchors", fmt="count", table=True)
_add("crop_size", "data", "two-stage only: side of the per-RoI crop (Faster R-CNN 14, 17 "
     "for Inception; R-FCN bins x samples per bin, 21 or 12); null for single-shot",
     unit="px", kind="integer")
_add("weights_mb", "data", "parameters + buffers", unit="MiB", short="weights")

# -- training ------------------------------------------------------------------------------
_add("train_iters", "training", "optimizer steps taken (all segments)", unit="iterations", kind="integer",
     short="steps", table=True)
_add("train_seconds", "training", "training wall time, summed over the segments of a "
     "resumed training (null if a resumed checkpoint did not record its time)", unit="s", short="training",
     table=True)
_add("train_paused_seconds", "training", "part of `train_seconds` spent paused while other "
     "jobs on this machine measured (`timing_pause_work`); 0 when none did", unit="s")
_add("final_loss", "training", "total loss, mean of the last logging window", fmt="fixed3")
_add("train_images_per_second", "training", "training throughput: images over the training "
     "wall time, data loading included (all ranks together under DDP; all segments)",
     unit="images/s")
_add("train_history", "training", "logged `(iteration, losses, lr)` records (`lr`: the "
     "rate that iteration's step used), from iteration 1 on (earlier segments' records come from the checkpoint)", kind="list")
_add("resumed", "training", "true when the training continued from the job folder's "
     "`checkpoint.pt` (a killed or preempted job run again)", unit="bool", kind="bool")
_add("train_segments", "training", "one `{start_iter, end_iter, seconds, images}` per "
     "process that trained; one entry when never resumed", kind="list")
_add("optimizer", "training", "the optimizer class trained with (`SGD`, `RMSprop`, "
     "`AdamW`)", kind="text")
_add("world_size", "training", "data-parallel ranks that trained the model "
     "(`train.devices`; 1 = one process)", unit="ranks", kind="integer")
_add("dist_backend", "training", "`gloo` (CPU) or `nccl` (CUDA) when `world_size` > 1, else "
     "null", kind="text")
_add("total_batch_size", "training", "images per optimizer step over all ranks (`devices` x "
     "`train.batch_size`)", unit="images", kind="integer")
_add("reference_batch_size", "training", "the batch `train.optimizer.lr` is tuned for "
     "(`train.reference_batch_size`; default one rank's batch)", unit="images",
     kind="integer")
_add("lr_scale", "training", "linear scaling factor `total_batch_size / "
     "reference_batch_size` (1 with `train.lr_scaling=none`)")
_add("effective_lr", "training", "the base learning rate trained with: `optimizer.lr` x "
     "`lr_scale` (the schedule multiplies it)")
_add("effective_warmup_iters", "training", "warm-up length: `train.warmup_iters`, whatever "
     "`lr_scale` (over it the rate climbs from the small-batch rate to `effective_lr`; "
     "docs/scale_out.md)", unit="iterations", kind="integer")
_add("sync_bn", "training", "BatchNorm during training: `off` (per-rank statistics), `sync` "
     "(SyncBatchNorm across ranks, CUDA) or `frozen` (running statistics, affine fixed); "
     "`sync` with one rank is recorded as `off`", kind="text")

# -- deployment runtime (`bench.backend`, docs/measurement.md#backends) ----------------------
_add("backend", "deployment", "what ran `predict` while timing (`bench.backend`): `eager` "
     "(PyTorch as built), `compile` (`torch.compile`), `onnxruntime` (exported to ONNX, run "
     "by ONNX Runtime: CPU provider, CUDA on a GPU) or `onnxruntime_tensorrt` (its TensorRT "
     "provider); pre- and postprocessing are PyTorch in all. Results written before it "
     "existed read as `compile` when `bench.compile` was set, else `eager`", kind="text",
     short="backend", table=True)
_add("backend_version", "deployment", "version of that backend: torch's for `eager` and "
     "`compile`, `onnxruntime.__version__` for the runtimes", kind="text")
_add("runtime_providers", "deployment", "ONNX Runtime execution providers of the session, in "
     "priority order (`CPUExecutionProvider`...); null for eager and compile", kind="list")
_add("runtime_threads", "deployment", "ONNX Runtime intra-op threads (torch's, so both "
     "backends time with the same threads)", kind="integer")
_add("runtime_export_seconds", "deployment", "wall time of exporting `predict` to ONNX and "
     "loading the sessions (one graph per input shape, all before timing)", unit="s")
_add("parity_max_abs_diff", "deployment", "largest runtime-vs-eager difference over the parity "
     "images: `boxes` (decoded candidate boxes before NMS, clipped, pixels), `scores` (class "
     "probabilities), `outputs` (predict's other raw tensors); two-stage models compare the "
     "RoIs both proposed (`parity_rois_paired`). Beyond `parity_tolerance` the job fails, "
     "untimed", kind="object")
_add("parity_tolerance", "deployment", "the tolerances parity was checked against "
     "(`bench.parity_box_atol`, `parity_score_atol`, `parity_map_atol`, and the share of "
     "proposals to reproduce)", kind="object")
_add("parity_images", "deployment", "validation images compared (`bench.parity_images`)",
     kind="integer")
_add("parity_same_detections", "deployment", "share of the parity images whose detections "
     "after NMS have the same number and labels in both (informative: exactly tied scores may "
     "be kept in either order)", unit="0-1")
_add("parity_rois_paired", "deployment", "two-stage: share of eager's proposals the runtime "
     "proposed too (same box within `parity_box_atol`); below 0.9 the job fails", unit="0-1")
_add("parity_boxes_px", "deployment", "`parity_max_abs_diff.boxes` as a column (pixels)",
     unit="px", where="table")
_add("backend_group", "deployment", "id shared by the results of one configuration that "
     "differ only in backend (and seed): the rows the report's backend table pairs",
     kind="text", where="table")
_add("parity_map", "deployment", "COCO AP of the runtime's own detections on the whole "
     "validation set (batch 1), when the job evaluates; more than `bench.parity_map_atol` "
     "from `map` fails the job", unit="0-1", fmt="percent")

# -- the measurement run ---------------------------------------------------------------------
_add("measure_errors", "measurement", "measurement name -> error for a probe that raised (its "
     "keys stay null); `{}` when complete", kind="object")
_add("measure_seconds", "measurement", "wall time of each measurement (latency, throughput, "
     "flops, roofline, memory)", unit="s", kind="object")
_add("timing_exclusive", "measurement", "the measurement phase held this machine's lock for "
     "the device: no other detbench job measured on it meanwhile (`timing_lock`, "
     "docs/scale_out.md)", unit="bool", kind="bool")
_add("timing_work_paused", "measurement", "the phase also held the device's work lock "
     "exclusively: no training step or evaluation batch of another detbench job on this "
     "machine ran meanwhile (`timing_pause_work`, docs/scale_out.md)", unit="bool",
     kind="bool")
_add("timing_lock_wait_s", "measurement", "time spent waiting for the lock(s) (null when "
     "`timing_lock=false`)", unit="s")
_add("measure_started_at", "measurement", "start of the measurement phase (after the wait)",
     unit="unix s", fmt="fixed1")
_add("measure_ended_at", "measurement", "end of the measurement phase; intervals of jobs on "
     "one device never overlap", unit="unix s", fmt="fixed1")

# -- environment (on every result, even failed ones) --------------------------------------
_ENV = [
    ("device", "`cpu` or `cuda`", "", "text"),
    ("device_name", "CPU model or GPU name", "", "text"),
    ("cpu_model", "`/proc/cpuinfo` model name", "", "text"),
    ("cpu_count", "logical CPUs of the machine", "", "integer"),
    ("num_threads", "torch intra-op threads in effect while timing", "", "integer"),
    ("num_interop_threads", "torch inter-op threads", "", "integer"),
    ("precision", "`fp32`, `fp16` or `bf16` (`bench.precision`)", "", "text"),
    ("channels_last", "NHWC memory format while timing", "bool", "bool"),
    ("fold_bn", "`bench.fold_bn`: batch norms folded into convolutions of the timed copy",
     "bool", "bool"),
    ("fold_bn_folded", "number of batch-norm layers folded", "", "integer"),
    ("fold_bn_note", "why the folded copy was discarded (outputs differed), else null", "",
     "text"),
    ("inference_mode", "timed under `torch.inference_mode` (false: `torch.no_grad`)", "bool",
     "bool"),
    ("compile", "`bench.backend=compile` (or its old spelling `bench.compile`): "
     "`torch.compile` requested for the timed copy", "bool", "bool"),
    ("compiled", "the timed copy really ran compiled", "bool", "bool"),
    ("compile_error", "why compilation fell back to eager, else null", "", "text"),
    ("torch_version", "", "", "text"),
    ("torchvision_version", "", "", "text"),
    ("timm_version", "", "", "text"),
    ("python_version", "", "", "text"),
    ("platform", "OS and kernel", "", "text"),
    ("hostname", "machine name", "", "text"),
    ("git_sha", "detbench commit the job ran from (code shipped to a Ray worker: the submitting checkout's, passed as `DETBENCH_GIT_SHA`)", "", "text"),
    ("cuda_version", "CUDA of the torch build", "", "text"),
    ("cudnn_version", "cuDNN of the torch build", "", "text"),
    ("cudnn_benchmark", "`torch.backends.cudnn.benchmark`", "bool", "bool"),
    ("cudnn_deterministic", "`torch.backends.cudnn.deterministic`", "bool", "bool"),
    ("tf32_matmul", "TF32 allowed in matmuls", "bool", "bool"),
    ("tf32_cudnn", "TF32 allowed in cuDNN convolutions", "bool", "bool"),
    ("float32_matmul_precision", "`torch.get_float32_matmul_precision()`", "", "text"),
    ("gpu_driver", "NVIDIA driver (CUDA only)", "", "text"),
    ("gpu_capability", "compute capability (CUDA only)", "", "text"),
    ("gpu_memory_mb", "device memory (CUDA only)", "MiB", "number"),
]
_PROTOCOL = {
    "precision": "precision",
    "channels_last": "channels-last memory format",
}
for _name, _meaning, _unit, _kind in _ENV:
    _add(_name, "environment", _meaning, unit=_unit, kind=_kind, label=_PROTOCOL.get(_name),
         protocol=_name in _PROTOCOL)

# -- columns results.csv derives ------------------------------------------------------------
_add("model_name", "config", "timm model behind the extractor, when it is a timm adapter",
     kind="text", where="table", lookup="config.extractor.model_name")
_add("pretrained", "config", "`extractor.pretrained` (ImageNet weights)", unit="bool",
     kind="bool", where="table", lookup="config.extractor.pretrained")
_add("weights_path", "config", "`extractor.weights_path`: local pretrained weights, if any",
     kind="text", where="table", lookup="config.extractor.weights_path")
_add("frozen_bn", "config", "`extractor.frozen_bn`", unit="bool", kind="bool", where="table",
     lookup="config.extractor.frozen_bn")
_add("max_iters", "config", "`train.max_iters`", unit="iterations", kind="integer",
     where="table", lookup="config.train.max_iters")
_add("batch_size", "config", "`train.batch_size`", unit="images", kind="integer",
     where="table", lookup="config.train.batch_size")
_add("lr", "config", "`train.optimizer.lr`", where="table", lookup="config.train.optimizer.lr")
_add("num_train", "config", "`data.num_train` (synthetic data)", unit="images",
     kind="integer", where="table", lookup="config.data.num_train")
_add("num_val", "config", "`data.num_val` (synthetic data)", unit="images", kind="integer",
     where="table", lookup="config.data.num_val")
_add("train_images", "config", "training images the data pipeline kept (`data_stats`, any "
     "dataset)", unit="images", kind="integer", where="table",
     lookup="data_stats.train.images")
_add("val_images", "config", "validation images evaluated (`data_stats`)", unit="images",
     kind="integer", where="table", lookup="data_stats.val.images")
_add("top1", "config", "ImageNet top-1 of the extractor's architecture (torchvision weight "
     "metadata, else Huang et al. 2017 Table 2); describes ImageNet weights, not a "
     "from-scratch run", unit="%", fmt="fixed1", where="table",
     label="Extractor ImageNet top-1 accuracy (%)", short="top-1")
_add("top1_source", "config", "where `top1` comes from", kind="text", where="table")
_add("extractor_group", "identity", "id of the configuration without its extractor: rows "
     "sharing it differ only in the feature extractor (the report's extractor comparison). "
     "The resolved config without `extractor`, the seed and the keys that cannot change a "
     "number, plus whether the extractor started from ImageNet weights, its `frozen_bn` and "
     "atrous mode (`output_stride` 8); keys a `recipe_set` sets per extractor "
     "(`sweeps/recipe_cell/<set>/<meta_arch>/*.yaml`) are left out, as they go with the "
     "extractor", kind="text", where="table")
_add("repeat_group", "identity", "id of the configuration without its seed: rows sharing it "
     "are seed repeats (`summary.csv`)", kind="text", where="table")

# -- summary.csv: seed repeats aggregated (benchmark/report/repeats.py) ----------------------
_add("n", "identity", "repeats behind the row (1 without `seed=` sweeps)", unit="runs",
     kind="integer", where="summary", short="n")
_add("seeds", "identity", "their seeds, `;`-separated", kind="text", where="summary")
_add("jobs", "identity", "their job folders, `;`-separated", kind="text", where="summary")
_add("ci_method", "identity", "`bootstrap` (one run: the run's own intervals) or "
     "`seeds+bootstrap` (n >= 2)", kind="text", where="summary")
for _name in [*(c[0] for c in _COCO), "latency_ms"]:
    _add(f"{_name}_sd", "identity", f"standard deviation of `{_name}` over the repeats (empty "
         "for n = 1)", unit="ms" if _name == "latency_ms" else "0-1",
         fmt="sig3" if _name == "latency_ms" else "percent", where="summary")

# -- frontier.csv --------------------------------------------------------------------------
_add("axis", "frontier", "the cost axis: `latency` (`latency_ms`), `gmacs` or `memory` "
     "(`peak_mem_mb`) by default; any cost column with `detbench-report --cost`", kind="text",
     where="frontier")
_add("cost_column", "frontier", "the results column of the axis", kind="text",
     where="frontier")
_add("vs_cheaper", "frontier", "`better` when the point's accuracy interval lies entirely "
     "above that of the next cheaper frontier point, `not distinguishable` when they overlap, "
     "`no interval` when either has none; empty for the cheapest", kind="text",
     where="frontier", short="vs cheaper")
_add("cheaper_label", "frontier", "that cheaper neighbour", kind="text", where="frontier")
_add("critical", "frontier", "Huang et al.'s Table 3 critical points: `fastest` (on a time "
     "axis; `cheapest` on the others), `sweet spot` (the elbow: the frontier point farthest "
     "above the line from the cheapest to the most accurate, with cost on a log scale), "
     "`most accurate`; empty for the other frontier points", kind="text", where="frontier")

# -- extractors.csv: configurations differing only in the extractor (report/extractors.py) ---
_add("setting", "extractors", "the configuration without its extractor (`SSD, 300 px`); "
     "rows of one setting share `extractor_group`", kind="text", where="extractors",
     short="setting")
_add("reference", "extractors", "the extractor a row is compared with: `detbench-report "
     "--baseline`, else the one present in most settings (ties: fewest GMACs); a setting "
     "without it is compared with its own extractor of fewest GMACs", kind="text",
     where="extractors", short="vs")
_add("accuracy_change", "extractors", "the report's accuracy metric (`--metric`, `map` by "
     "default) minus the reference's, in points", unit="0-1", fmt="percent",
     where="extractors", short="Δ accuracy")
_add("latency_ratio", "extractors", "`latency_ms` / the reference's", unit="ratio",
     fmt="ratio", where="extractors", short="latency ×")
_add("gmacs_ratio", "extractors", "`gmacs` / the reference's", unit="ratio", fmt="ratio",
     where="extractors", short="GMACs ×")
_add("memory_ratio", "extractors", "`peak_mem_mb` / the reference's", unit="ratio",
     fmt="ratio", where="extractors", short="memory ×")
_add("extractor_share", "extractors", "`gmacs_extractor / gmacs`: the extractor's share of "
     "the multiply-adds", unit="0-1", fmt="percent", where="extractors",
     short="extractor share")
_add("neck_share", "extractors", "`gmacs_neck / gmacs`", unit="0-1", fmt="percent",
     where="extractors", short="neck share")
_add("head_share", "extractors", "`gmacs_head / gmacs`", unit="0-1", fmt="percent",
     where="extractors", short="head share")
# fmt: on
