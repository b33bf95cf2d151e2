"""Tissue classes: short names, text-prompt descriptions, mask indices and colours.

A class set travels with every store and run, so later phases can check they agree.
BCSS-WSSS is the built-in default; LUAD-HistoSeg is a preset; any JSON file of the same
shape defines another dataset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from construct.errors import ConstructError

BACKGROUND_COLOR = (255, 255, 255)


@dataclass(frozen=True)
class TissueClass:
    name: str  # short name used as a JSON key, e.g. "TUM"
    full_name: str
    description: str  # text prompt for CONCH's text encoder (prototype initialisation)
    mask_index: int
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """The foreground classes of a dataset, in label-bracket order, plus the background index."""

    name: str
    classes: tuple[TissueClass, ...]
    background_index: int
    background_color: tuple[int, int, int] = BACKGROUND_COLOR

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def descriptions(self) -> list[str]:
        return [c.description for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def n_mask_values(self) -> int:
        """Number of valid mask indices: the foreground classes and background."""
        return max(self.background_index, *(c.mask_index for c in self.classes)) + 1

    def palette(self) -> list[int]:
        """A 768-entry PNG palette: class colours at their mask indices, black elsewhere."""
        pal = [0] * 768
        for c in self.classes:
            pal[3 * c.mask_index : 3 * c.mask_index + 3] = list(c.color)
        b = self.background_index
        pal[3 * b : 3 * b + 3] = list(self.background_color)
        return pal

    def label_scheme(self) -> tuple:
        """What the labels and masks mean: names in label order, their mask indices, the background's.
        Descriptions (the prototypes' starting text) and colours may differ between a run and a dataset."""
        return tuple((c.name, c.mask_index) for c in self.classes), self.background_index

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "background_index": self.background_index,
            "background_color": list(self.background_color),
            "classes": [
                {**asdict(c), "color": list(c.color)} for c in self.classes
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassSet:
        classes = tuple(
            TissueClass(
                name=str(c["name"]),
                full_name=str(c.get("full_name", c["name"])),
                description=str(c["description"]),
                mask_index=int(c["mask_index"]),
                color=tuple(int(v) for v in c["color"]),  # type: ignore[arg-type]
            )
            for c in d["classes"]
        )
        return cls(
            name=str(d["name"]),
            classes=classes,
            background_index=int(d["background_index"]),
            background_color=tuple(int(v) for v in d.get("background_color", BACKGROUND_COLOR)),  # type: ignore[arg-type]
        )


# Class prompts: Table 1 of the ConStruct paper (Le, Thach, Vu et al., MIDL 2026), word for word, straight
# quotes as printed. The prototypes are initialised from CONCH's embeddings of these exact strings, so a
# paraphrase would change the starting point of training. (The authors' config prefixes each with the code,
# e.g. "Tumor (TUM) regions ...", and uses curly quotes; we follow the paper.)
BCSS_TABLE1 = {
    "TUM": "Tumor regions consist of malignant epithelial cells characterized by pleomorphic, hyperchromatic "
           "nuclei, loss of glandular structure, and frequent mitotic figures, representing the core cancerous "
           "lesions in breast tissue.",
    "STR": "Stroma comprises the surrounding connective tissue, including fibroblasts and collagen fibers, often "
           "appearing as pink fibrous structures and sometimes showing desmoplastic reactions to tumor invasion.",
    "LYM": "Lymphocyte regions contain dense clusters of small immune cells with dark, round nuclei and minimal "
           "cytoplasm, reflecting the host immune response within the tumor microenvironment.",
    "NEC": "Necrosis represents areas of dead or dying tissue with pale, structureless eosinophilic regions, "
           "nuclear debris, and \"ghost\" cell remnants, typically associated with aggressive tumor growth and "
           "poor vascularization.",
}

BCSS = ClassSet(
    name="bcss",
    classes=(
        TissueClass("TUM", "Tumor", BCSS_TABLE1["TUM"], 0, (255, 0, 0)),
        TissueClass("STR", "Stroma", BCSS_TABLE1["STR"], 1, (0, 255, 0)),
        TissueClass("LYM", "Lymphocyte", BCSS_TABLE1["LYM"], 2, (0, 0, 255)),
        TissueClass("NEC", "Necrosis", BCSS_TABLE1["NEC"], 3, (153, 0, 255)),
    ),
    background_index=4,
)

LUAD = ClassSet(
    name="luad",
    classes=(
        TissueClass("TE", "Tumor epithelial", "tumor epithelial tissue of lung adenocarcinoma with atypical glandular cells", 0, (205, 51, 51)),
        TissueClass("NEC", "Necrosis", "necrotic tissue with pale eosinophilic debris and nuclear fragments", 1, (0, 255, 0)),
        TissueClass("LYM", "Lymphocyte", "lymphocytic infiltrate of densely packed small round dark nuclei", 2, (65, 105, 225)),
        TissueClass("TAS", "Tumor-associated stroma", "tumor-associated stroma with pink fibrous collagen and spindle cells", 3, (255, 165, 0)),
    ),
    background_index=4,
)

PRESETS: dict[str, ClassSet] = {"bcss": BCSS, "luad": LUAD}


def load_classes(spec: str | Path | None = None) -> ClassSet:
    """`None`/"bcss" → BCSS, "luad" → LUAD-HistoSeg, otherwise a JSON file in `ClassSet.to_dict` form."""
    if spec is None:
        return BCSS
    key = str(spec).lower()
    if key in PRESETS:
        return PRESETS[key]
    path = Path(spec)
    if not path.is_file():
        raise ConstructError(f"{path}: classes file not found (or use a preset: {', '.join(PRESETS)})")
    try:
        return ClassSet.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConstructError(f"{path}: not a valid classes file ({e})") from e
