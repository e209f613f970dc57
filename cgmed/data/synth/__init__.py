"""A procedural *synthetic MAT world*, written in exactly the layout of the Med-MAT release.

Every image is composed of three separate factors, so that a small model can learn them one
by one and compose them into combinations it never saw:

- the **modality** is the rendering style: background colour, organ colour and texture;
- the **area** is the anatomy outline: a distinct organ shape per area;
- the **label** is a finding drawn *inside* the organ, in a colour that contrasts with every
  modality's organ colour. A task fixes the family of findings (masses, lesions, dot counts,
  shapes) and each label of the task one variant; the same label of the same task looks the
  same under every modality and area. A label named ``Normal`` draws no finding.

``write_release`` writes ``Aggregated_Subsets/Subset--NN-{train,test}.json``, the PNG images
under ``med-mat/`` and a ``cgmed_catalog.json`` declaring each subset's triplet, so every
reader path of cgmed runs on it.

Two layouts (``synth.layout``):

- ``grid`` (default): the subsets are ``synth.modalities x synth.areas x synth.tasks`` (or
  ``synth.combinations``), numbered 01, 02, ... in that order, all with status ID.
- ``medmat``: a stand-in for the whole Med-MAT classification release: subsets 01-37 with
  their real ids, MAT triplets (CG task tags) and ID/OOD status from
  ``cgmed.data.subsets.MEDMAT_SUBSETS``, and synthetic labels per task tag
  (``MEDMAT_TASK_LABELS``). ``synth.modalities/areas/tasks/combinations`` are ignored there.
  With ``synth.medmat_detection: true`` it also writes the detection subsets the paper's
  classification <-> detection experiments use (38, 39, 42, 47, 49; Tables 5/13/14), with one
  finding label each (``MEDMAT_DETECTION_LABELS``); segmentation subsets are never written.
  With ``synth.medmat_multi_label: true`` the release's multi-label subsets (15, 20, 31, 33, 37)
  are written as such (below). Configs written for the real release (e.g.
  ``cgmed/conf/experiment/paper/``) then run unchanged on synthetic pixels.

**Multi-label subsets** (``medmat`` layout, ``synth.medmat_multi_label: true``): each has 2-4
individual findings (``MEDMAT_MULTI_LABEL_FINDINGS``); an image shows one or two of them, each
whole, apart from the other and with its own look (``render_findings``), or none (``Normal``).
As in the release, ``caption`` and ``Answer`` are the label set, comma-joined in one canonical
(sorted) order (``format_label_set``: ``"Effusion, Nodule"``), the options are label sets of
the subset and ``Answer-choice`` points at the record's own set. A subset cycles through Normal
and each single finding twice and each pair once, so pairs are rarer, as in the release. A
finding's look is chosen among its task tag's labels (``medmat_task_labels``): it looks the same
in every subset of the tag (subset 20's cells as subset 18's) and unlike every other label of
the tag. The catalog lists the label sets as ``labels`` and the findings as ``findings``.

**Detection subsets** (task tag ``Det``, e.g. ``synth.tasks: {Det: [Tumor]}``): the labels are
finding names (no ``Normal``: there would be nothing to box). Each image draws its label's
finding, with the look the same label has in a classification task of the world when there is
one (else its designed look, e.g. Tumor = the yellow disc), and its ground-truth box is the
min/max x/y of the finding's pixel mask (the paper derives boxes from masks), on MiniGPT-v2's
0-100 grid: x1, y1 = floor(left/top pixel edge * 100 / size), x2, y2 = ceil(right/bottom pixel
edge * 100 / size), so the box always encloses every finding pixel. Records keep the release
fields ``id``, ``caption`` (the finding), ``image``, ``Question`` (a detection instruction,
``choices.DETECTION_TEMPLATES``), ``Answer`` (the box, ``{<x1><y1><x2><y2>}``) and ``data-no``,
plus ``bbox`` ([x1, y1, x2, y2]); there is no ``Question-choice`` / ``Answer-choice``. The
catalog gives these subsets ``task: Det`` and ``status: det``, so the split rules train on them
only when a selection names them or ``split.train_status`` includes ``det`` (the default
``[ID, OOD]`` leaves them out, as for the real release).

Output is a pure function of the config: every image and record draws from its own RNG
(``rng_for(seed, subset, split, index)``), so files are byte-identical between runs and
independent of iteration order.

Where things live:

- ``config``: ``SynthConfig``, the ``synth`` config group and its checks;
- ``layout``: which subsets a layout holds, their names, labels (label sets of multi-label
  subsets), folders and the release's directories;
- ``looks``: modality palettes and textures, and the finding colours;
- ``anatomy``: the organ outline of each area and where one or several findings fit in it;
- ``findings``: what each label of each task draws;
- ``drawing``: composing one image (``render``, ``render_findings``, ``render_detection``) and a
  box from a mask;
- ``release``: ``write_release``, the writer of the whole world.
"""

from cgmed.data.synth.anatomy import AreaShape, area_shape
from cgmed.data.synth.config import LAYOUTS, OPTION_ORDERS, TEST_FILE_MODES, SynthConfig
from cgmed.data.synth.drawing import box_from_mask, render, render_detection, render_findings
from cgmed.data.synth.findings import KINDS, MAX_DOTS, Finding, detection_looks, finding_for, is_normal
from cgmed.data.synth.layout import (
    CATALOG_FORMAT,
    IMAGES_DIR,
    MEDMAT_DETECTION_LABELS,
    MEDMAT_LAYOUT_IDS,
    MEDMAT_MULTI_LABEL_FINDINGS,
    MEDMAT_TASK_LABELS,
    SUBSETS_DIR,
    SubsetSpec,
    format_label_set,
    image_folder,
    medmat_task_labels,
    multi_label_sets,
    parse_label_set,
    subset_name,
)
from cgmed.data.synth.looks import (
    CYAN,
    FINDING_COLOURS,
    GREEN,
    MAGENTA,
    MIN_CONTRAST,
    PALETTES,
    RGB,
    YELLOW,
    Palette,
    palette,
)
from cgmed.data.synth.release import write_release

__all__ = [
    "CATALOG_FORMAT",
    "CYAN",
    "FINDING_COLOURS",
    "GREEN",
    "IMAGES_DIR",
    "KINDS",
    "LAYOUTS",
    "MAGENTA",
    "MAX_DOTS",
    "MEDMAT_DETECTION_LABELS",
    "MEDMAT_LAYOUT_IDS",
    "MEDMAT_MULTI_LABEL_FINDINGS",
    "MEDMAT_TASK_LABELS",
    "MIN_CONTRAST",
    "OPTION_ORDERS",
    "PALETTES",
    "RGB",
    "SUBSETS_DIR",
    "TEST_FILE_MODES",
    "YELLOW",
    "AreaShape",
    "Finding",
    "Palette",
    "SubsetSpec",
    "SynthConfig",
    "area_shape",
    "box_from_mask",
    "detection_looks",
    "finding_for",
    "format_label_set",
    "image_folder",
    "is_normal",
    "medmat_task_labels",
    "multi_label_sets",
    "palette",
    "parse_label_set",
    "render",
    "render_detection",
    "render_findings",
    "subset_name",
    "write_release",
]
