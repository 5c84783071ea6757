"""class-balance: the targets the model trains on are not (nearly) all one class."""

from __future__ import annotations

from doctor.core.page import Sections, number
from doctor.probe.checks import FAIL, PASS, WARN, RuntimeCheck, Skip, result
from doctor.probe.trace import ProbeRun

CHECK = RuntimeCheck(
    name="class-balance",
    code="DP117",
    summary="The training targets are not (nearly) all one class, and batches are not single-class.",
)

#: 99% of the labels one class: a constant answer already scores 99%.
ONE_CLASS = 0.99
#: Fewer labels than two small batches say little about a stream.
MIN_TARGETS = 64


PAGE = Sections(
    why=f"""
        A batch stream that is almost all one class lets the model score by always answering that class:
        the data is sorted by label and read in order, filtered to one class by mistake, or the labels are
        constant. The probe counts the class labels of the classification losses on sampled steps
        (cross-entropy/NLL class indices; binary 0/1 labels of BCE with one output per sample) over the run,
        and per batch the share of its most frequent label. It fails when at least {number(ONE_CLASS * 100)}% of the
        labels seen (and at least {MIN_TARGETS} of them) are one class, for one label per sample; it warns when
        every batch holds a single class although the run saw several (sorted, unshuffled data).

        What to do: shuffle the training data (`DataLoader(..., shuffle=True)`), check the dataset's
        filtering and the label column; for a truly imbalanced dataset weight the loss (`weight=`,
        `pos_weight=`) or resample.
    """,
    known_problems=f"""
        Only warns for per-pixel or per-token labels (segmentation backgrounds can be 99%) and for binary
        labels (rare positives can be real). Silent on regression and soft targets, and with fewer than
        {MIN_TARGETS} labels seen. A few-shot or episodic sampler that draws one class per batch warns.
    """,
    bad="""
        loader = DataLoader(dataset_sorted_by_label, batch_size=64, shuffle=False)
    """,
    good="""
        loader = DataLoader(dataset_sorted_by_label, batch_size=64, shuffle=True)
    """,
)


def evaluate(run: ProbeRun):
    targets = (run.summary or {}).get("targets") or {}
    counts = targets.get("class_counts")
    binary = targets.get("binary_counts") if targets.get("binary_hard") else None
    per_batch = [s.output.get("label_top_frac") for s in run.sampled_steps() if s.output.get("label_top_frac") is not None]
    advice = ("Shuffle the training data (DataLoader(..., shuffle=True)); check the dataset's filtering and labels; "
              "for a truly imbalanced dataset weight the loss (weight=/pos_weight=) or resample.")
    if counts and sum(counts) >= MIN_TARGETS:
        total = sum(counts)
        top_class = max(range(len(counts)), key=counts.__getitem__)
        share = counts[top_class] / total
        seen = sum(1 for c in counts if c)
        batch_share = sum(per_batch) / len(per_batch) if per_batch else None
        per_sample = len(run.loss_info.get("target_shape") or [0]) == 1
        evidence = {"labels_seen": total, "classes": len(counts), "classes_seen": seen, "top_class": top_class,
                    "top_share": share, "mean_batch_top_share": batch_share, "per_sample_labels": per_sample}
        if share >= ONE_CLASS:
            msg = (f"{share:.1%} of the {total} labels seen are class {top_class}: the model can score by always "
                   "answering it (sorted data read in order, a filter, or constant labels?)")
            return result(CHECK, FAIL if per_sample else WARN, msg, evidence, advice)
        if batch_share is not None and batch_share >= ONE_CLASS and seen > 1:
            return result(CHECK, WARN, f"every batch holds a single class ({batch_share:.0%} on average) although "
                          f"{seen} classes were seen: the data is sorted by label and not shuffled", evidence, advice)
        return result(CHECK, PASS, f"{seen} of {len(counts)} classes among {total} labels, largest {share:.0%}", evidence)
    if binary and sum(binary) >= MIN_TARGETS:
        neg, pos = binary
        share = max(neg, pos) / (neg + pos)
        evidence = {"labels_seen": neg + pos, "negatives": neg, "positives": pos, "top_share": share}
        if share >= ONE_CLASS:
            which = "negative" if neg >= pos else "positive"
            return result(CHECK, WARN, f"{share:.1%} of the {neg + pos} binary labels seen are {which}", evidence, advice)
        return result(CHECK, PASS, f"binary labels: {pos / (neg + pos):.0%} positive of {neg + pos}", evidence)
    raise Skip("no class labels seen (regression, soft targets, or too few labels)")
