"""The paper report's Data section, from the data report the loop built at its first cycle on the
task (`logs/data_report.json`): images and classes per split, imbalance, native sizes, unreadable
files, duplicates, and prominent warnings when train images leak into val or a probe set, or when
the ages that pick the recall and delta probes only mirror the class order."""
from __future__ import annotations

from loop.domains.datareport import DataReport
from loop.report.data import ReportData
from loop.report.helpers import plural, table


def leak_warning(data: ReportData) -> list[str]:
    """A block quote for the top of the report when the data leaks ([] otherwise)."""
    r = data.data_report
    if r is None or not r.leaks:
        return []
    pairs = "; ".join(f"train -> {o.b}: {plural(o.images, 'image')}" for o in r.leaks)
    return [f"> **WARNING: data leak.** Exact pixel copies of training images are in held-out sets ({pairs}). "
            "Scores on those sets are optimistic: a model is rewarded for memorising them. See the Data section.",
            ""]


def age_warning(data: ReportData) -> list[str]:
    """A block quote for the top of the report when the ages follow the class ([] otherwise)."""
    text = data.data_report.age_warning() if data.data_report is not None else ""
    return [f"> **WARNING: ages.** {text} See the Data section.", ""] if text else []


def data_section(data: ReportData) -> list[str]:
    lines = ["## Data", ""]
    r = data.data_report
    if r is None:
        return lines + ["No data report in this workspace (`logs/data_report.json`): the loop writes one at its "
                        "first cycle on a task."]
    lines += [f"From the data report of {r.created or 'an unknown time'} ({r.domain}, fingerprint "
              f"`{r.fingerprint[:12]}`): {plural(r.images, 'image')}, {len(r.class_names)} classes, "
              f"{r.channels} channel(s).", ""]
    lines += table(["split", "images", "smallest class", "largest class"], split_rows(r)) + [""]
    small, small_n = r.smallest_class
    s = r.sizes
    lines.append(f"- Class imbalance (train): largest/smallest class {r.imbalance if r.imbalance else 'n/a'}; "
                 f"smallest class {small} ({plural(small_n, 'image')}).")
    lines.append(f"- Native image sizes (HxW): min {s.min_hw[0]}x{s.min_hw[1]}, median {s.median_hw[0]}x"
                 f"{s.median_hw[1]}, max {s.max_hw[0]}x{s.max_hw[1]}; most common {s.most_common_hw[0]}x"
                 f"{s.most_common_hw[1]} ({s.most_common_share:.0%}).")
    lines.append(f"- Unreadable files: {r.unreadable_count}"
                 + (" (" + "; ".join(f"`{u.split}/{u.id}`" for u in r.unreadable[:5]) + ")" if r.unreadable else "")
                 + ".")
    for o in r.leaks:
        lines.append(f"- **Leak train -> {o.b}**: {plural(o.images, o.b + ' image')} with an exact copy in train"
                     + (", e.g. " + ", ".join(f"`{a}` = `{b}`" for a, b in o.examples[:3]) if o.examples else "")
                     + ".")
    if r.ages is not None:
        lines.append(f"- Ages ({r.ages.ages_from}): Cramér's V {r.ages.cramers_v:.2f} between class and age decile; "
                     + ("recall and delta were drawn stratified, as the ages follow the class." if r.ages.fell_back
                        else "recall from the older data, delta from the newest."))
    within = [o for o in r.within_split if o.images]
    lines.append("- Exact duplicates within a split (no leak): "
                 + (", ".join(f"{o.a} {o.images}" for o in within) if within else "none") + ".")
    if r.label_conflicts:
        lines.append(f"- Identical images with different labels: {r.label_conflicts}.")
    return lines


def split_rows(r: DataReport) -> list[list]:
    rows = []
    for name, split in r.splits.items():
        ranked = sorted(split.per_class.items(), key=lambda kv: (kv[1], kv[0]))
        rows.append([name, split.images, f"{ranked[0][0]} ({ranked[0][1]})" if ranked else "-",
                     f"{ranked[-1][0]} ({ranked[-1][1]})" if ranked else "-"])
    return rows
