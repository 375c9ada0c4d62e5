"""The configuration reference (``docs/config.md``), generated from the schema's field docs."""

from __future__ import annotations

from kdistill.config.loader import field_docs
from kdistill.config.schema import RunConfig

HEADER = """# Configuration reference

Generated from the schema in `src/kdistill/config/schema.py` by `kdistill config docs`; a test
keeps this file in sync. A YAML config sets any of these keys (values only); the command line
overrides them with `key=value` (e.g. `kd.temperature=2`, `model.args.hidden=[800,800]`,
`kd.teachers.0.checkpoint=runs/teacher`). Unknown keys and wrong types are errors.

| key | type | default | meaning |
|---|---|---|---|
"""


def render_markdown() -> str:
    rows = []
    for key, type_name, default, text in field_docs(RunConfig):
        cell = text.replace("|", "\\\\|")
        rows.append(f"| `{key}` | {type_name.replace('|', 'or')} | `{default}` | {cell} |")
    return HEADER + "\n".join(rows) + "\n"
