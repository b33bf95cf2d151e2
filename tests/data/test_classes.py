"""The BCSS prompts are the paper's Table 1, word for word: the prototypes start from their embeddings."""

from __future__ import annotations

from construct.data.classes import BCSS, load_classes

# Typed out from Table 1 of the ConStruct paper (the text after each code and colon, straight quotes).
TABLE1 = {
    "TUM": "Tumor regions consist of malignant epithelial cells characterized by pleomorphic, hyperchromatic nuclei, loss of glandular structure, and frequent mitotic figures, representing the core cancerous lesions in breast tissue.",  # noqa: E501
    "STR": "Stroma comprises the surrounding connective tissue, including fibroblasts and collagen fibers, often appearing as pink fibrous structures and sometimes showing desmoplastic reactions to tumor invasion.",  # noqa: E501
    "LYM": "Lymphocyte regions contain dense clusters of small immune cells with dark, round nuclei and minimal cytoplasm, reflecting the host immune response within the tumor microenvironment.",  # noqa: E501
    "NEC": 'Necrosis represents areas of dead or dying tissue with pale, structureless eosinophilic regions, nuclear debris, and "ghost" cell remnants, typically associated with aggressive tumor growth and poor vascularization.',  # noqa: E501
}


def test_bcss_prompts_are_table1_verbatim():
    assert BCSS.names == list(TABLE1)
    for name, description in zip(BCSS.names, BCSS.descriptions):
        assert description == TABLE1[name]


def test_default_class_set_carries_table1():
    assert load_classes(None).descriptions == list(TABLE1.values())
