"""What a `precompute` run did: the summary it returns, and the CSV of every image it left out."""

import collections
import dataclasses
from csv import writer as csv_writer

from features.atomic_files import open_atomic
from features.dataset import reason_kind

# Skipped images named one per line in the summary; all of them go to OUT.skipped.csv.
SUMMARY_MAX_SKIPPED = 5


@dataclasses.dataclass(frozen=True)
class PrecomputeSummary:
    """What a `precompute` run did.

    Args:
        store_path: the store written.
        images: images in the store (readable ones).
        computed: backbone name -> images computed in this run.
        reused: backbone name -> images already in the store.
        skipped: tuple of (path, reason) of all unreadable images.
        skipped_now: how many of `skipped` were found in this run.
        added_images: images added to an existing store in this run.
        missing_on_disk: stored images no longer on disk (kept in the store).
        seconds: wall-clock time of the run.
        timings: where the time of the compute loop went, in seconds: "build" (building
            backbones not yet in this process's cache), "compute" (predict calls),
            "decode_wait" (waiting for decoded images), "write_wait" (waiting for the
            writer's queue), "prepare" (decode+resize, summed over the decode threads)
            (default: empty).
        left_out: tuple of (path, reason) of images the data names that are not in the store:
            CSV rows without a file, classes below `min_images_per_class` (default: ()).
        skipped_csv: the CSV file listing `skipped` and `left_out` in full (default: "").
        dropped_classes: classes left out because none of their images could be read (default: ()).
        class_names: the store's classes (default: ()).
        retried: skipped images tried again in this run, because they changed on disk or
            `retry_skipped` asked for it (default: 0).
        options: the options in effect: those given, except the ones that made an existing
            store's rows and splits, which come from the store (default: empty).
        options_differing: option -> (given, in effect) where the store's value was kept
            (default: empty).
        compute_seconds: backbone name -> seconds its predict calls took in this run; the store
            adds them up over runs in `/cost/features/<backbone>` (default: empty).
        decoded_images: images decoded and resized in this run, unreadable ones included; their
            seconds are `timings["prepare"]` (default: 0).
        sharding: how a `--ray` run's shards and workers went, a
            `features.ray_precompute.ShardingReport` (default: None, a run in one process).
    """

    store_path: str
    images: int
    computed: dict
    reused: dict
    skipped: tuple
    skipped_now: int
    added_images: int
    missing_on_disk: int
    seconds: float
    timings: dict = dataclasses.field(default_factory=dict)
    left_out: tuple = ()
    skipped_csv: str = ""
    dropped_classes: tuple = ()
    class_names: tuple = ()
    retried: int = 0
    options: dict = dataclasses.field(default_factory=dict)
    options_differing: dict = dataclasses.field(default_factory=dict)
    compute_seconds: dict = dataclasses.field(default_factory=dict)
    decoded_images: int = 0
    sharding: object = None

    @property
    def seconds_per_image(self):
        """Backbone name -> seconds of predict calls per image computed in this run; None where none was.

        Example:
            >>> summary.seconds_per_image
            {'resnet50': 0.0412, 'vgg16': None}
        """
        return {name: self.compute_seconds[name] / count if count and name in self.compute_seconds else None
                for name, count in self.computed.items()}

    def lines(self):
        """The summary as lines of text for the terminal: counts by reason, never one line per file."""
        lines = [f"Store: {self.store_path} ({self.images} images, {len(self.class_names)} classes)"]
        per_image = self.seconds_per_image
        for name in self.computed:
            cost = f", {per_image[name]:.3g} s/image" if per_image[name] is not None else ""
            lines.append(f"  {name}: computed {self.computed[name]}, reused {self.reused[name]}{cost}")
        if self.decoded_images and "prepare" in self.timings:
            lines.append(f"  decode and resize: {self.timings['prepare'] / self.decoded_images:.3g} s/image "
                         f"(one decode serves every backbone)")
        if self.sharding is not None:
            lines.extend(self.sharding.lines())
        if self.added_images:
            lines.append(f"  added {self.added_images} new image(s) to the store")
        if self.retried:
            lines.append(f"  tried {self.retried} skipped image(s) again (changed on disk, or --retry-skipped)")
        for key, (given, in_effect) in self.options_differing.items():
            lines.append(f"  {key}={given} given, but the store was made with {key}={in_effect}: its rows keep the "
                         f"splits they were made with, and {key}={in_effect} is recorded as the option in effect")
        if self.missing_on_disk:
            lines.append(f"  {self.missing_on_disk} stored image(s) are no longer on disk; their rows are kept")
        by_reason = collections.Counter(reason_kind(reason) for _, reason in self.skipped)
        lines.append(f"  skipped {len(self.skipped)} unreadable image(s)"
                     + (f" ({self.skipped_now} found in this run): " if self.skipped else "")
                     + ", ".join(f"{count} {kind}" for kind, count in by_reason.most_common()))
        for path, reason in self.skipped[:SUMMARY_MAX_SKIPPED]:
            lines.append(f"    {path}: {reason}")
        if len(self.skipped) > SUMMARY_MAX_SKIPPED:
            lines.append(f"    ... and {len(self.skipped) - SUMMARY_MAX_SKIPPED} more")
        if self.dropped_classes:
            lines.append(f"  {len(self.dropped_classes)} class(es) left out, none of their images could be read: "
                         + ", ".join(self.dropped_classes))
        if self.left_out:
            lines.append(f"  left out {len(self.left_out)} image(s) that the data names (CSV rows without a file or "
                         "outside DATA, broken symlinks, classes below --min-images-per-class)")
        if self.skipped_csv and (self.skipped or self.left_out):
            lines.append(f"  every skipped and left-out image, with its reason: {self.skipped_csv}")
        return lines


def write_skipped_csv(path, rows):
    """Write (path, reason) rows to the CSV `path` whole or not at all (temporary file, fsync, rename).

    Example:
        >>> write_skipped_csv("cache.h5.skipped.csv", [("cat/broken.jpg", "not an image file PIL can identify")])
    """
    with open_atomic(path, newline="", encoding="utf-8") as handle:
        writer = csv_writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(rows)

