"""Write docs/adapterhub_api.rst: how this library's API compares with AdapterHub 1.3.0's.

The page is generated from the same data the API test checks — the snapshot of AdapterHub's API
(``tests/fixtures/adapterhub_api.json``), the tables of differences and absent names
(``tests/adapterhub_api_tables.py``) and the status of every name that
``tests/test_adapterhub_api.py`` computes — so it cannot drift from what the test enforces.
``tests/test_adapterhub_api.py`` fails when the committed page differs from what this script
writes; rerun it after changing the tables::

    HF_HUB_OFFLINE=1 python utils/adapterhub_api_page.py          # rewrite the page
    HF_HUB_OFFLINE=1 python utils/adapterhub_api_page.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "adapterhub_api.rst")
TESTS = os.path.join(ROOT, "tests")

_HEADER = """\
.. _adapterhub-api:

AdapterHub API compatibility
============================

This library keeps the API of AdapterHub's ``adapters`` 1.3.0. What that means is checked name by
name: ``utils/make_adapterhub_api_snapshot.py``, run where AdapterHub 1.3.0 is installed, records
every public name AdapterHub exports (from ``adapters``, ``adapters.composition``,
``adapters.configuration``, ``adapters.heads``, ``adapters.wrappers``, ``adapters.utils``, ...) and
every public member of its model mixins, AdapterModel base, trainers and configuration and
composition classes, with their call signatures, in ``tests/fixtures/adapterhub_api.json``.
``tests/test_adapterhub_api.py`` requires each of them to be, here, one of:

* **compatible**: at the same import path (a member on the class that plays its role: a model
  after ``adapters.init``, an AdapterModel, ...), of the same kind, and accepting every call
  AdapterHub accepts: each positional argument in the same place, each keyword name, the same
  optional parameters (with the same simple defaults); extra optional parameters are fine. A
  dataclass's fields (the configuration classes) are compared by keyword only. A keyword this
  library takes only through ``**kwargs`` counts as not accepted, as the check cannot see what
  ``**kwargs`` does with it; an AdapterHub signature that is only ``(*args, **kwargs)`` (a
  wrapper around transformers' own method) matches any;
* **partial**: present, and the only AdapterHub parameters it lacks are listed below as absent;
* a **difference**, listed below with its reason: a deliberate choice, or a name left out on
  purpose (a few differences are marked *to align*: AdapterHub's form is to be adopted);
* **absent**, listed below with its reason and what will add it.

The test fails when a name is none of these, and also when a listed name is no longer what the
list says (an absent name that exists now, a difference that has become compatible), so these
lists stay true. The tables live in ``tests/adapterhub_api_tables.py``; this page is generated from
them by ``utils/adapterhub_api_page.py``.
"""

_STATUSES = ("compatible", "partial", "difference", "absent")


def _tables():
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import adapterhub_api_tables
    import test_adapterhub_api

    return adapterhub_api_tables, test_adapterhub_api


def _display(entry_id: str) -> str:
    """``adapters.heads:CausalLMHead`` -> ``adapters.heads.CausalLMHead``; members stay as they are."""
    return entry_id.replace(":", ".")


def _reason(tables, checks, entry_id: str, table: dict) -> str:
    key = checks.table_entry(table, entry_id)
    if key is not None:
        return table[key]
    return "its class is absent (see the class's entry)"


def _grouped(pairs) -> list:
    """[(reason, [names...])] in first-seen order of the reasons, names sorted."""
    groups: dict = {}
    for name, reason in pairs:
        groups.setdefault(reason, []).append(name)
    return [(reason, sorted(names)) for reason, names in groups.items()]


def _bullets(groups) -> list[str]:
    lines = []
    for reason, names in groups:
        lines.append("* " + ", ".join(f"``{n}``" for n in names) + ":")
        lines.append(f"  {reason}.")
    return lines


def render(statuses: dict) -> str:
    tables, checks = _tables()
    areas: dict = {}
    for area, status, _ in statuses.values():
        areas.setdefault(area, dict.fromkeys(_STATUSES, 0))[status] += 1
    lines = [_HEADER, "Summary", "-------", ""]
    totals = dict.fromkeys(_STATUSES, 0)
    lines += [
        "Recorded AdapterHub names per module (exports) or class (members), and their status here.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - AdapterHub module or class",
        "     - names",
        *[f"     - {s}" for s in _STATUSES],
    ]
    for area, counts in areas.items():
        lines += [f"   * - ``{area}``", f"     - {sum(counts.values())}", *[f"     - {counts[s]}" for s in _STATUSES]]
        for s in _STATUSES:
            totals[s] += counts[s]
    lines += ["   * - all", f"     - {sum(totals.values())}", *[f"     - {totals[s]}" for s in _STATUSES], ""]

    differences = [(e, st) for e, st in statuses.items() if st[1] == "difference"]
    deliberate = [(e, st) for e, st in differences if checks.table_entry(tables.TO_ALIGN, e) is None]
    to_align = [(e, st) for e, st in differences if checks.table_entry(tables.TO_ALIGN, e) is not None]
    sections = (
        ("Deliberate differences", "Names that differ here on purpose, or that are left out on purpose.", deliberate),
        ("Differences to align", "Names that differ here and are to take AdapterHub's form.", to_align),
    )
    for title, intro, entries in sections:
        lines += [title, "-" * len(title), "", intro, ""]
        lines += _bullets(_grouped((_display(e), _reason(tables, checks, e, tables.DIFFERENCES)) for e, _ in entries)) or ["None."]
        lines.append("")
    absent = [e for e, st in statuses.items() if st[1] == "absent"]
    lines += ["Absent names", "------------", "", "AdapterHub names this library does not have yet.", ""]
    lines += _bullets(_grouped((_display(e), _reason(tables, checks, e, tables.ABSENT)) for e in absent)) or ["None."]
    lines.append("")
    params = sorted(k for k in tables.ABSENT if "(" in k)
    lines += ["Absent parameters", "-----------------", "", "Parameters of present names that this library does not accept yet.", ""]
    lines += _bullets(_grouped((_display(k), tables.ABSENT[k]) for k in params)) or ["None."]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page is out of date")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _, checks = _tables()
    text = render(checks.statuses())
    if args.check:
        with open(OUTPUT, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{OUTPUT} is out of date: run python utils/adapterhub_api_page.py", file=sys.stderr)
                return 1
        return 0
    with open(OUTPUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
