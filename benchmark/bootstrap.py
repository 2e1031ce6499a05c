"""Bootstrap confidence intervals of the 12 COCO metrics over validation images.

``COCOeval.evaluate()`` matches detections to ground truth once per (category, area range,
image); ``accumulate()`` then pools those per-image matches over all images into precision
and recall. Resampling *images* changes only the pooling, never the matching, so each
bootstrap resample is re-accumulated from the stored matches (``COCOeval.evalImgs``) with
every image weighted by the number of times it was drawn: seconds for 1,000 resamples,
instead of 1,000 runs of ``evaluate()``.

A resample draws N images with replacement from the N validation images (images without
ground truth or detections included). An image drawn k times counts as k independent
images: its ground truth counts k times towards recall, and each of its detections appears
k times in the score-ranked list, the k copies next to each other (they have one score).
This equals running pycocotools on a dataset in which the image is copied k times, which
the tests check. For weight 1 everywhere, :func:`accumulate` gives exactly pycocotools'
precision and recall arrays (and :func:`summarize` its 12 numbers), ties in score included:
detections are ranked with pycocotools' own stable sort. The bootstrap runs :func:`stats`,
the same numbers without the full arrays (checked against pycocotools as well).

Why a weighted detection can be one point of the precision/recall curve rather than k:
along k copies of a true positive precision rises, so the interpolated precision (the
running maximum from the right) is the same over the whole run and equals its value at the
last copy; k copies of a false positive keep recall constant and are dominated by the point
just before them. Detections of undrawn images (weight 0) repeat the previous point and
change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

# (AP or AR, IoU threshold or None for .5:.95, area label, index into maxDets) per stat, as
# in pycocotools' _summarizeDets.
_STATS = (
    (1, None, "all", 2),
    (1, 0.5, "all", 2),
    (1, 0.75, "all", 2),
    (1, None, "small", 2),
    (1, None, "medium", 2),
    (1, None, "large", 2),
    (0, None, "all", 0),
    (0, None, "all", 1),
    (0, None, "all", 2),
    (0, None, "small", 2),
    (0, None, "medium", 2),
    (0, None, "large", 2),
)
METHOD = "percentile"
BOOKKEEPING_KEYS = (
    "bootstrap_samples",
    "bootstrap_method",
    "bootstrap_confidence",
    "bootstrap_seconds",
)
# Floats per chunk of resamples in the cumulative sums: bounds memory to ~100 MB.
_CHUNK_FLOATS = 4_000_000
# Largest per-block matrix of false positives before each mixed detection (16 MB).
_MATRIX_FLOATS = 2_000_000


@dataclass(frozen=True)
class _Block:
    """The detections of one (category, area range, maxDet) in accumulate()'s ranking.

    Detections ignored at every IoU threshold are left out: they change neither count.
    Most detections of a weak detector are false positives at every threshold; they enter
    only through one cumulative count (``always_fp``), while the per-threshold work runs on
    the few others (``tp``/``fp`` at positions ``mixed``).
    """

    image: np.ndarray  # [n] int: index of each detection's image
    always_fp: np.ndarray  # [n] bool: false positive at every IoU threshold
    mixed: np.ndarray  # [q] int: positions of the other detections
    tp: np.ndarray  # [T, q] bool: true positive at each IoU threshold
    fp: np.ndarray  # [T, q] bool: false positive at each IoU threshold
    images: np.ndarray  # [J] int: the images with a counted detection, ascending
    tp_per_image: np.ndarray  # [J, T] float: their true positives (for recall)
    # Always-false positives ranked before each mixed detection, per image: [F, n] counts
    # for the images ``fp_images`` [F]; None for blocks too large (then a cumulative sum).
    fp_images: np.ndarray
    fp_before: np.ndarray | None


@dataclass(frozen=True)
class PerImageMatches:
    """pycocotools' per-image matching of one evaluation, arranged for re-accumulation.

    Attributes:
        num_images: I, the evaluated images (``params.imgIds``).
        params: the COCOeval params (IoU and recall thresholds, area ranges, maxDets).
        num_gt: ``[K, A, I]`` non-ignored ground truth per category, area range and image.
        blocks: ``(k, a, m) -> _Block``, absent where no image has ground truth or
            detections of category k (pycocotools then leaves precision and recall at -1).
    """

    num_images: int
    params: object
    num_gt: np.ndarray
    blocks: dict[tuple[int, int, int], _Block]

    @classmethod
    def from_cocoeval(cls, ev: COCOeval) -> PerImageMatches:
        """Read ``ev.evalImgs`` after ``ev.evaluate()`` (default bbox parameters)."""
        p = ev._paramsEval
        cat_ids = p.catIds if p.useCats else [-1]
        K, A, I = len(cat_ids), len(p.areaRng), len(p.imgIds)  # noqa: E741
        T = len(p.iouThrs)
        num_gt = np.zeros((K, A, I), dtype=np.int64)
        blocks = {}
        for k in range(K):
            for a in range(A):
                base = k * A * I + a * I
                entries = [(i, ev.evalImgs[base + i]) for i in range(I)]
                entries = [(i, e) for i, e in entries if e is not None]
                for i, e in entries:
                    num_gt[k, a, i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                if not entries:
                    continue
                for m, max_det in enumerate(p.maxDets):
                    blocks[k, a, m] = _block(entries, max_det, T)
        return cls(I, p, num_gt, blocks)


def _block(entries: list[tuple[int, dict]], max_det: int, T: int) -> _Block:
    """Pool the per-image matches as accumulate() does: concatenate the images in order,
    keep each image's first ``max_det`` detections, rank by score with a stable sort."""
    scores = np.concatenate([np.asarray(e["dtScores"][:max_det], dtype=float) for _, e in entries])
    image = np.concatenate(
        [np.full(min(len(e["dtScores"]), max_det), i, dtype=np.int64) for i, e in entries]
    )
    order = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([e["dtMatches"][:, :max_det] for _, e in entries], axis=1)[:, order]
    dt_ig = np.concatenate([e["dtIgnore"][:, :max_det] for _, e in entries], axis=1)[:, order]
    image = image[order]
    tp = np.logical_and(dtm, np.logical_not(dt_ig)).reshape(T, -1)
    fp = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig)).reshape(T, -1)
    keep = (tp | fp).any(axis=0)
    tp, fp, image = tp[:, keep], fp[:, keep], image[keep]
    images, local = np.unique(image, return_inverse=True)
    tp_per_image = np.zeros((len(images), T))
    np.add.at(tp_per_image, local, tp.T.astype(float))
    always_fp = fp.all(axis=0)
    mixed = np.flatnonzero(~always_fp)
    fp_positions = np.flatnonzero(always_fp)
    fp_images, fp_local = np.unique(image[fp_positions], return_inverse=True)
    fp_before = None
    if len(fp_images) * len(mixed) <= _MATRIX_FLOATS:
        # An always-false positive is before mixed detection j when at most j mixed
        # detections precede it: count per (preceding mixed count, image), then cumulate.
        preceding = np.searchsorted(mixed, fp_positions)
        counts = np.zeros((len(mixed) + 1, len(fp_images)))
        np.add.at(counts, (preceding, fp_local), 1.0)
        fp_before = np.cumsum(counts, axis=0)[: len(mixed)].T.copy()
    return _Block(
        image,
        always_fp,
        mixed,
        tp[:, mixed],
        fp[:, mixed],
        images,
        tp_per_image,
        fp_images,
        fp_before,
    )


def _first_count(num_gt: int, rec_thrs: np.ndarray, cache: dict) -> np.ndarray:
    """For each recall threshold r, the fewest true positives c with ``c / num_gt >= r``,
    with the same float division as pycocotools (so equality cases agree exactly)."""
    if num_gt not in cache:
        recalls = np.arange(num_gt + 1) / num_gt
        cache[num_gt] = np.searchsorted(recalls, rec_thrs, side="left")
    return cache[num_gt]


def _curves(block: _Block, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True-positive counts and interpolated precision at the mixed detections.

    Evaluating the curve only there is exact: a false positive's precision is below that of
    the point before it, so it never raises the interpolated precision (the running maximum
    from the right) of an earlier point; and the first point to reach a recall threshold is
    a true positive (or, for recall 0, a point whose interpolated precision is the maximum
    over the true positives, or 0 without any).

    Args:
        chunk: ``[b, I]`` image multiplicities.

    Returns:
        ``tpc`` ``[b, T, n]`` int64 (cumulative weighted true positives) and the
        interpolated precision ``[b, T, n]``.
    """
    # Weighted always-false positives ranked before each mixed detection: [b, n].
    if block.fp_before is not None:
        before = chunk[:, block.fp_images] @ block.fp_before
    else:
        before = np.cumsum(chunk[:, block.image] * block.always_fp, axis=1)[:, block.mixed]
    w = chunk[:, block.image[block.mixed]][:, None, :]  # [b, 1, n]
    tpc = np.cumsum(w * block.tp, axis=2)  # integer-valued floats
    fpc = np.cumsum(w * block.fp, axis=2) + before[:, None, :]
    pr = tpc / (fpc + tpc + np.spacing(1))  # pycocotools' formula, operation for operation
    envelope = np.maximum.accumulate(pr[..., ::-1], axis=2)[..., ::-1]
    return tpc.astype(np.int64), envelope


def _chunks(block: _Block, B: int) -> range:
    T, n = block.tp.shape
    return range(0, B, max(1, _CHUNK_FLOATS // (6 * T * n + len(block.image))))


def _block_precision(
    block: _Block, weights: np.ndarray, num_gt: np.ndarray, rec_thrs: np.ndarray, cache: dict
) -> np.ndarray:
    """pycocotools' precision at each recall threshold, for each weight vector.

    Args:
        weights: ``[B, I]`` image multiplicities.
        num_gt: ``[B]`` weighted non-ignored ground truth (> 0).

    Returns:
        ``[B, T, R]``: pycocotools' ``q`` (0 beyond the highest recall reached).
    """
    B = len(weights)
    T, n = block.tp.shape
    R = len(rec_thrs)
    out = np.zeros((B, T, R))
    if n == 0:  # no true positive at any threshold: precision 0 at every recall
        return out
    for lo in _chunks(block, B):
        tpc, envelope = _curves(block, weights[lo : lo + _chunks(block, B).step])
        b = len(tpc)
        # First detection whose recall reaches each threshold: recall >= r exactly when the
        # true-positive count >= c_r, so search integer counts, all rows at once (each row
        # shifted above the previous one so the flattened array stays sorted).
        unique, inverse = np.unique(num_gt[lo : lo + b], return_inverse=True)
        first = np.stack([_first_count(int(g), rec_thrs, cache) for g in unique])[inverse]
        counts = tpc.reshape(b * T, n)
        shift = int(max(counts.max(), first.max())) + 2
        offsets = np.arange(b * T, dtype=np.int64)[:, None] * shift
        keys = np.repeat(first, T, axis=0) + offsets  # [b*T, R]
        pos = np.searchsorted((counts + offsets).ravel(), keys.ravel(), side="left")
        pos = pos.reshape(b * T, R) - np.arange(b * T)[:, None] * n
        reached = pos < n
        q = np.take_along_axis(envelope.reshape(b * T, n), np.minimum(pos, n - 1), axis=1)
        out[lo : lo + b] = np.where(reached, q, 0.0).reshape(b, T, R)
    return out


def _block_precision_sum(
    block: _Block, weights: np.ndarray, num_gt: np.ndarray, rec_thrs: np.ndarray
) -> np.ndarray:
    """:func:`_block_precision` summed over the recall thresholds, ``[B, T]``, without a
    search: each threshold takes the interpolated precision of the first detection whose
    true-positive count reaches its count ``c_r``, so detection j contributes its value
    once for every threshold with ``tpc[j-1] < c_r <= tpc[j]``. With ``N(c)`` = the number
    of thresholds with ``c_r <= c`` (a table per ground-truth count), that is
    ``N(tpc[j]) - N(tpc[j-1])`` thresholds."""
    B = len(weights)
    T, n = block.tp.shape
    out = np.zeros((B, T))
    if n == 0:
        return out
    unique, inverse = np.unique(num_gt, return_inverse=True)
    # N(c) for c = 0..g, every distinct g one after the other in one flat table.
    tables = [
        np.searchsorted(
            np.searchsorted(np.arange(g + 1) / g, rec_thrs, side="left"),
            np.arange(g + 1),
            side="right",
        )
        for g in unique
    ]
    starts = np.concatenate([[0], np.cumsum([len(t) for t in tables])[:-1]])
    flat = np.concatenate(tables)
    for lo in _chunks(block, B):
        tpc, envelope = _curves(block, weights[lo : lo + _chunks(block, B).step])
        reached = flat[starts[inverse[lo : lo + len(tpc)]][:, None, None] + tpc]  # N(tpc)
        served = np.diff(reached, axis=2, prepend=0)
        out[lo : lo + len(tpc)] = (envelope * served).sum(axis=2)
    return out


def _blocks(matches: PerImageMatches, weights: np.ndarray):
    """Yield ``(key, block, rows, weights[rows], num_gt[rows])`` per block, for the weight
    rows in which the block's category has ground truth (elsewhere pycocotools leaves -1).

    ``rows`` is a slice when every row qualifies, so the weights are not copied.
    """
    K, A, I = matches.num_gt.shape  # noqa: E741
    num_gt = np.rint(weights @ matches.num_gt.reshape(K * A, I).T).astype(np.int64)
    num_gt = num_gt.reshape(len(weights), K, A)
    for (k, a, m), block in matches.blocks.items():
        g = num_gt[:, k, a]
        has_gt = g > 0
        if has_gt.all():
            yield (k, a, m), block, slice(None), weights, g
        elif has_gt.any():
            yield (k, a, m), block, has_gt, weights[has_gt], g[has_gt]


def _block_recall(block: _Block, weights: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """``[B, T]`` recall: weighted true positives over weighted ground truth."""
    return (weights[:, block.images] @ block.tp_per_image) / num_gt[:, None]


def accumulate(matches: PerImageMatches, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``COCOeval.accumulate()`` for each row of image weights (the full arrays).

    Args:
        matches: the per-image matching of one evaluation.
        weights: ``[B, I]`` how many times each image counts (all ones: the full set).

    Returns:
        ``precision [B, T, R, K, A, M]`` and ``recall [B, T, K, A, M]``, -1 where a
        category has no (non-ignored) ground truth, like ``COCOeval.eval``.
    """
    p = matches.params
    weights = np.asarray(weights, dtype=float)
    B = len(weights)
    K, A, _ = matches.num_gt.shape
    T, R, M = len(p.iouThrs), len(p.recThrs), len(p.maxDets)
    precision = -np.ones((B, T, R, K, A, M))
    recall = -np.ones((B, T, K, A, M))
    cache: dict[int, np.ndarray] = {}
    for (k, a, m), block, rows, w, g in _blocks(matches, weights):
        recall[rows, :, k, a, m] = _block_recall(block, w, g)
        precision[rows, :, :, k, a, m] = _block_precision(block, w, g, p.recThrs, cache)
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray, params) -> np.ndarray:
    """pycocotools' 12 summary numbers from :func:`accumulate`'s arrays: ``[B, 12]``.

    The same selection as ``COCOeval.summarize()`` and the mean over the entries > -1
    (-1 where there is none), vectorised over resamples. The summation order differs from
    ``np.mean``'s, so the full set matches ``COCOeval.stats`` to float rounding.
    """
    out = -np.ones((len(precision), len(_STATS)))
    labels = list(params.areaRngLbl)
    for j, (ap, iou, area, m) in enumerate(_STATS):
        a = labels.index(area)
        t = np.flatnonzero(iou == params.iouThrs) if iou is not None else slice(None)
        # Basic indexing first, then the thresholds: mixing an index array with slices
        # and integers would move the resample axis.
        s = (precision[..., a, m] if ap else recall[..., a, m])[:, t]
        s = s.reshape(len(s), -1)
        valid = s > -1
        count = valid.sum(axis=1)
        total = np.where(valid, s, 0.0).sum(axis=1)
        out[:, j] = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return out


def stats(matches: PerImageMatches, weights: np.ndarray) -> np.ndarray:
    """The 12 metrics for each row of image weights, ``[B, 12]`` (-1 where undefined).

    :func:`accumulate` + :func:`summarize` without the full precision array: AP reads only
    the precision at the largest maxDet, and a category's precision is either all -1 (no
    ground truth) or all defined, so summing over the recall thresholds at once is enough.
    This is what the bootstrap runs.
    """
    p = matches.params
    weights = np.asarray(weights, dtype=float)
    B = len(weights)
    K, A, _ = matches.num_gt.shape
    T, R, M = len(p.iouThrs), len(p.recThrs), len(p.maxDets)
    precision_sum = np.zeros((B, T, K, A))  # summed over the R recall thresholds
    has_precision = np.zeros((B, K, A), dtype=bool)
    recall = -np.ones((B, T, K, A, M))
    for (k, a, m), block, rows, w, g in _blocks(matches, weights):
        recall[rows, :, k, a, m] = _block_recall(block, w, g)
        if m == M - 1:
            precision_sum[rows, :, k, a] = _block_precision_sum(block, w, g, p.recThrs)
            has_precision[rows, k, a] = True
    out = -np.ones((B, len(_STATS)))
    labels = list(p.areaRngLbl)
    for j, (ap, iou, area, m) in enumerate(_STATS):
        a = labels.index(area)
        t = np.flatnonzero(iou == p.iouThrs) if iou is not None else np.arange(T)
        if ap:
            assert m == M - 1, "AP is summarized at the largest maxDet"
            count = has_precision[:, :, a].sum(axis=1) * len(t) * R
            total = precision_sum[..., a][:, t].sum(axis=(1, 2))  # (see summarize)
        else:
            s = recall[..., a, m][:, t].reshape(B, -1)
            count = (s > -1).sum(axis=1)
            total = np.where(s > -1, s, 0.0).sum(axis=1)
        out[:, j] = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return out


def bootstrap_stats(
    matches: PerImageMatches, samples: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The 12 metrics on ``samples`` resamples of the images.

    Returns:
        ``[samples, 12]`` metrics (NaN where a resample leaves a metric undefined, e.g. no
        small objects drawn) and the ``[samples, I]`` weights used.
    """
    rng = np.random.default_rng(seed)
    n = matches.num_images
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)
    out = stats(matches, weights) if samples else np.zeros((0, len(_STATS)))
    return np.where(out > -1, out, np.nan), weights


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """The percentile bootstrap interval (numpy's linear interpolation) of the defined values,
    or None when fewer than half of the resamples define the metric."""
    defined = values[np.isfinite(values)]
    if defined.size == 0 or defined.size < 0.5 * values.size:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class BootstrapSettings:
    """The ``eval`` config node (``sweeps/config.yaml``): resamples, seed, confidence."""

    bootstrap: int = 1000  # resamples; 0 switches the intervals off (keys null)
    bootstrap_seed: int = 0
    confidence: float = 0.95

    def __post_init__(self):
        if not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"eval.bootstrap must be an integer >= 0, got {self.bootstrap!r}")
        if not 0.0 < float(self.confidence) < 1.0:
            raise ValueError(f"eval.confidence must be in (0, 1), got {self.confidence!r}")

    @classmethod
    def from_cfg(cls, node: Any | None) -> BootstrapSettings:
        """From the ``eval`` DictConfig or a dict (None: the defaults); unknown keys raise."""
        if node is None:
            return cls()
        data = dict(node)
        known = {f.name for f in fields(cls)}
        if unknown := set(data) - known:
            raise ValueError(f"unknown eval settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def interval_key_names(metric_keys: Iterable[str]) -> tuple[str, ...]:
    """``<metric>_ci_low``, ``<metric>_ci_high`` per metric, then the ``bootstrap_*`` keys."""
    names = [f"{k}_ci_{side}" for k in metric_keys for side in ("low", "high")]
    return (*names, *BOOKKEEPING_KEYS)


def interval_keys(ev: COCOeval | None, metrics: dict, settings: BootstrapSettings) -> dict:
    """The interval keys of :func:`interval_key_names` for one evaluation.

    Args:
        ev: the COCOeval after ``evaluate()``; None when there were no detections (every
            resample then scores what the full set scores: 0).
        metrics: the 12 point estimates (pycocotools' own numbers) in ``COCOeval.stats``
            order, None where undefined; a metric without estimate gets no interval.
        settings: resamples (0: every interval null), seed and confidence.
    """
    if len(metrics) != len(_STATS):
        raise ValueError(f"expected the {len(_STATS)} COCO metrics, got {list(metrics)}")
    t0 = time.perf_counter()
    out: dict[str, Any] = dict.fromkeys(interval_key_names(metrics))
    samples = settings.bootstrap
    if samples > 0 and ev is None:
        for key, value in metrics.items():
            if value is not None:
                out[f"{key}_ci_low"] = out[f"{key}_ci_high"] = float(value)
    elif samples > 0:
        matches = PerImageMatches.from_cocoeval(ev)
        resampled, _ = bootstrap_stats(matches, samples, settings.bootstrap_seed)
        for j, (key, value) in enumerate(metrics.items()):
            ci = percentile_interval(resampled[:, j], settings.confidence)
            if value is not None and ci is not None:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = ci
    out.update(
        bootstrap_samples=samples,
        bootstrap_method=METHOD if samples > 0 else None,
        bootstrap_confidence=float(settings.confidence) if samples > 0 else None,
        bootstrap_seconds=time.perf_counter() - t0,
    )
    return out
