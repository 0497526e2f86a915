"""The dataset card of a `hub` export: README.md with the YAML header the Hugging Face Hub and
`datasets` read (config, features, split sizes) and a body that says what made the images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from farm import __version__, scorers
from farm.outputs import write_atomic
from farm.selection import Report, Selection, public_ref, published


def features(schema) -> list[dict[str, Any]]:
    """The card's `features`: a name and a dtype (or a struct) for each column."""
    import pyarrow as pa

    def one(name: str, kind) -> dict[str, Any]:
        if name == "image":
            return {"name": name, "dtype": "image"}
        if pa.types.is_struct(kind):
            return {"name": name, "struct": [one(f.name, f.type) for f in kind]}
        return {"name": name, "dtype": str(kind).replace("double", "float64")}

    return [one(f.name, f.type) for f in schema]


def write(to: Path, selection: Selection, schema, summary: dict[str, Any],
          report: Report) -> None:
    """README.md of a hub export: written whole each time (it is small)."""
    header = {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": features(schema),
            "splits": [{"name": "train", "num_bytes": summary["bytes"],
                        "num_examples": summary["rows"]}],
            "dataset_size": summary["bytes"],
        },
        "task_categories": ["text-to-image"],
        "tags": ["synthetic", "farm"],
    }
    run = yaml.safe_dump(published(selection.record), sort_keys=False, allow_unicode=True) \
        if selection.record else None
    models = "\n".join(f"- `{public_ref(ref, selection.base)}` (`{identity}`)" for ref, identity
                       in summary["models"].items()) or "- (none recorded)"
    scored = "\n".join(
        f"- `{u['scorer']}` ({', '.join(scorers.KINDS[u['scorer']].columns)}): "
        + (f"model `{public_ref(u['model'], selection.base)}`, " if u["model"] else "")
        + f"scorer identity `{u['identity']}`, {u['images']} images" for u in selection.scorers)
    scores = f"""
## Scores

Score columns, made by `farm score` (a score belongs to the image's pixels and the scorer):

{scored}
""" if selection.scorers else ""
    duplicates = ("\n`dup_group`: the file number of the first image of the image's group of "
                  "near-duplicates (`farm dedup`).\n" if selection.grouped else "")
    body = f"""# {selection.run.name}

Images rendered by farm {__version__} (a batch render farm for diffusion models), one row
per image: the image, its caption (`text`), and every setting that made it (the job's id,
models and their content hashes, prompt, negative, seed, sampler, schedule, steps, cfg, size,
...), so that each image can be rendered again.

- images: {summary["rows"]} in {len(report.files)} shard(s), {summary["bytes"]:,} bytes of images
- selection: {selection.where}
- sizes: {", ".join(summary["sizes"])}
- samplers / schedules: {", ".join(summary["samplers"])}

## Models

{models}
{scores}{duplicates}
## Recipe

The recipe of the run folder's last run (`runs/run-NNNN.yaml` in the run folder):

```yaml
{run.rstrip() if run else "(no run recorded)"}
```
"""
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    write_atomic(to / "README.md", text.encode())
