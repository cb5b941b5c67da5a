"""Write docs/support_table.rst: architecture × method support, generated from the test matrix.

The rows are the architectures the tests build (``CONFIGS`` in ``tests/conftest.py``); a cell is
"yes" where the tests run that method on that architecture and "no" where a conftest exclusion
list (``NO_PREFIX``, ``NO_ADAPTER_MODEL``, ...) leaves it out — so the table cannot claim more than
the tests check. ``tests/test_support_table.py`` fails when the committed file differs from what
this script writes; rerun it after changing the matrix::

    python utils/support_table.py          # rewrite docs/support_table.rst
    python utils/support_table.py --check  # exit 1 if it is out of date

Adding an exclusion list to conftest means adding one :class:`Column` (or one name to an existing
column's ``excluded_by``) below; a list a column names but conftest lacks is treated as empty, so
the script keeps working while lists come and go.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "support_table.rst")


@dataclasses.dataclass(frozen=True)
class Column:
    """One method column: supported on every architecture of the matrix except those in the
    conftest lists ``excluded_by`` (each excluded cell names the list's reason).

    Example::

        >>> Column("Prefix tuning", excluded_by=("NO_PREFIX",))
    """

    title: str
    excluded_by: tuple[str, ...] = ()
    tested_on: tuple[str, ...] = ()

    def tested_archs(self, matrix) -> set:
        """The architectures the tests run this column on: ``tested_on`` (architecture names or
        conftest list names), or every architecture when it is empty."""
        if not self.tested_on:
            return set(matrix.CONFIGS)
        return {a for name in self.tested_on for a in (getattr(matrix, name, None) or (name,))}


#: the columns, in order; reasons for the exclusion lists are given in REASONS
COLUMNS = (
    Column("Bottleneck, Compacter"),
    Column("LoRA, DoRA, (IA)³"),
    # tests/test_peft_methods.py runs the weight transforms on these representatives
    Column("LoHa, LoKr, OFT, HRA, AdaLoRA", tested_on=("bert", "llama", "gpt2", "NEW_ARCHS", "t5", "bart", "whisper")),
    # tests/test_vera.py: the same representatives
    Column("VeRA, DVoRA", tested_on=("bert", "llama", "gpt2", "NEW_ARCHS", "t5", "bart", "whisper")),
    # tests/test_mtl_lora.py and tests/test_reft.py run on every architecture
    Column("MTL-LoRA (MultiTask)"),
    Column("ReFT (LoReFT, NoReFT, DiReFT)"),
    Column("Prefix tuning", excluded_by=("NO_PREFIX",)),
    Column("Llama-Adapter", excluded_by=("NO_PREFIX", "NO_ADAPTION_PROMPT")),
    Column("Prompt tuning", excluded_by=("NO_PROMPT",)),
    Column("Composition (Stack, Fuse, Parallel, ...)"),
    Column("AdapterModel class", excluded_by=("NO_ADAPTER_MODEL",)),
    Column("sdpa attention", excluded_by=("NO_SDPA",)),
)

#: conftest lists naming each architecture's kind (a missing list is empty)
KINDS = (
    ("ENCODERS", "encoder"),
    ("DECODERS", "decoder"),
    ("ENCODER_DECODERS", "encoder-decoder"),
    ("VISION", "vision"),
    ("NO_HEADS", "CLIP tower"),
    ("DUAL", "dual encoder (text + image)"),
)

#: the footnote text for each exclusion list
REASONS = {
    "NO_PREFIX": "attention does not call transformers' attention interface, through which prefixes enter",
    "NO_PROMPT": "the model cannot take a soft prompt (Whisper reads audio features; CLIP's text tower, alone or in CLIPModel, pools at the end-of-text position in input_ids; BEiT's relative position bias covers the image's patch grid only; EncoderDecoderModel's decoder reads its own tokens, so a prompt would only lengthen the encoder output, as AdapterHub also refuses)",
    "NO_ADAPTION_PROMPT": "defined for decoder-only models; refused on encoder-decoders and CLIPModel (prefix tuning covers them), and on GPT-J and DeBERTa, whose attention scores keys in its own code (prefix tuning enters there through a class swap)",
    "NO_ADAPTER_MODEL": "no AdapterModel class; adapters work on transformers' own head models",
    "NO_SDPA": "transformers' class cannot run sdpa (eager is used)",
}


def load_conftest():
    """The test matrix module (``tests/conftest.py``), imported without pytest collecting it."""
    path = os.path.join(ROOT, "tests", "conftest.py")
    spec = importlib.util.spec_from_file_location("_support_table_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(matrix) -> str:
    """The reStructuredText table for the test matrix ``matrix`` (a conftest-like module).

    Example::

        >>> print(render(load_conftest())[:40])
    """
    archs = list(matrix.CONFIGS)
    used = [name for column in COLUMNS for name in column.excluded_by]
    footnotes = {name: name.lower().replace("_", "-") for name in dict.fromkeys(n for n in used if getattr(matrix, n, ()))}
    kind = {arch: ", ".join(label for name, label in KINDS if arch in getattr(matrix, name, ())) for arch in archs}
    lines = [
        ".. This file is generated by utils/support_table.py from tests/conftest.py; do not edit it by hand.",
        "",
        ".. list-table:: Architecture × method support (as tested)",
        "   :header-rows: 1",
        "   :stub-columns: 1",
        "",
        "   * - model type",
        "     - kind",
    ]
    lines += [f"     - {column.title}" for column in COLUMNS]
    for arch in archs:
        lines += [f"   * - ``{arch}``", f"     - {kind[arch]}"]
        for column in COLUMNS:
            excluded = [name for name in column.excluded_by if arch in getattr(matrix, name, ())]
            if excluded:
                lines.append(f"     - no [#{footnotes[excluded[0]]}]_")
            else:
                lines.append("     - yes" if arch in column.tested_archs(matrix) else "     - untested [#untested]_")
    lines.append("")
    for name, number in footnotes.items():
        lines.append(f".. [#{number}] ``{name}``: {REASONS.get(name, 'excluded by the test matrix')}.")
    if any(set(archs) - c.tested_archs(matrix) for c in COLUMNS):
        lines.append(".. [#untested] the same code path as the tested architectures, but not in the test matrix.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/support_table.rst is out of date")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    text = render(load_conftest())
    current = open(OUTPUT, encoding="utf-8").read() if os.path.isfile(OUTPUT) else None
    if args.check:
        if current != text:
            print(f"{OUTPUT} is out of date; run python utils/support_table.py")
            return 1
        return 0
    with open(OUTPUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
