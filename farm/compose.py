"""Recipe files composed with Hydra into typed settings; the only module that touches Hydra.

A recipe name finds recipes/NAME.yaml in the working directory, then farm's packaged examples.
The recipe file, farm's defaults for every recipe field and the structured `runtime` group are
composed by Hydra with the command-line overrides; the result is checked by recipe.parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from farm import models
from farm import recipe as recipes
from farm.jobs import Model
from farm.outputs import RunFolder
from farm.schedule import Runtime

DEFAULT_RECIPE = "demo"
SETTINGS = ("runtime", "outputs")  # config keys that are not recipe fields


class BadInput(Exception):
    """Anything wrong with what the user asked for; reported before anything is written."""


@dataclass(frozen=True)
class Settings:
    recipe: recipes.Recipe
    runtime: Runtime
    outputs: Path  # the folder that holds run folders
    resolved: str  # the composed config as YAML, saved with each run

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.outputs / self.recipe.name, self.recipe.image)


def find_recipe(ref: str) -> Path:
    """recipes/NAME.yaml in the working directory, then the packaged examples; or a path."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise BadInput(f"recipe: {ref!r}: no such file")
        return path
    local = Path("recipes") / f"{ref}.yaml"
    if local.is_file():
        return local
    packaged = resources.files("farm") / "recipes" / f"{ref}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    known = sorted({p.stem for p in Path("recipes").glob("*.yaml")}
                   | {Path(p.name).stem for p in (resources.files("farm") / "recipes").iterdir()
                      if p.name.endswith(".yaml")})
    raise BadInput(f"recipe: {ref!r}: not found in ./recipes or farm's examples; "
                   f"known recipes: {', '.join(known)}; or give a path to a .yaml file")


def load_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe file as plain data (safe YAML: no tags, no code)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BadInput(f"recipe {path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"recipe {path}: expected a mapping of recipe fields, got {data!r}")
    unknown = sorted(set(data) - set(recipes.DEFAULTS))
    if unknown:
        raise BadInput(f"recipe {path}: {unknown[0]}: unknown field; allowed: "
                       f"{', '.join(recipes.DEFAULTS)}")
    return data


def check_overrides(overrides: list[str]) -> None:
    """Name the field when an override is not one (Hydra's own message suggests '+key')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    allowed = [*recipes.DEFAULTS, *SETTINGS]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise BadInput(f"command line: {e}") from None
    for override in parsed:
        root = override.key_or_group.split(".")[0]
        if root not in allowed or override.package is not None:
            raise BadInput(f"command line: {override.input_line!r}: unknown field {root!r}; "
                           f"allowed: {', '.join(allowed)}")
        if root in recipes.DEFAULTS and "." in override.key_or_group:
            raise BadInput(f"command line: {override.input_line!r}: {root} has no sub-fields; "
                           f"set it whole, e.g. {root}=...")


def compose(args: list[str]) -> Settings:
    """Recipe file + command-line overrides + runtime group, composed by Hydra, then checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe_ref = DEFAULT_RECIPE
    overrides = []
    for arg in args:
        if arg.startswith("recipe="):
            recipe_ref = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    path = find_recipe(recipe_ref)
    data = load_recipe_file(path)
    check_overrides(overrides)

    store = ConfigStore.instance()
    store.store(group="runtime", name="ray", node=Runtime(kind="ray"))
    store.store(group="runtime", name="inline", node=Runtime(kind="inline"))
    store.store(name="farm", node={
        "defaults": [{"runtime": "ray"}, "_self_"],
        **recipes.DEFAULTS, "name": path.stem, **data, "outputs": "outputs",
    })
    try:
        with initialize(version_base=None, config_path=None):
            cfg = hydra_compose("farm", overrides=overrides)
        runtime = OmegaConf.to_object(cfg.runtime)
        config = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise BadInput(f"command line: {e}".strip()) from None
    del config["runtime"]
    outputs = Path(str(config.pop("outputs")))
    recipe = recipes.parse(config, source=path.stem, base=path.parent)
    resolved = yaml.safe_dump({"recipe": str(path), "overrides": overrides, **config,
                               "runtime": OmegaConf.to_container(cfg.runtime)}, sort_keys=False)
    return Settings(recipe=recipe, runtime=runtime, outputs=outputs, resolved=resolved)


def resolve_models(recipe: recipes.Recipe) -> dict[str, Model]:
    """Every checkpoint and VAE of the recipe, checked and identified."""
    found: dict[str, Model] = {}
    for field, refs in (("checkpoint", recipe.checkpoint), ("vae", recipe.vae)):
        seen: dict[str, str] = {}
        for ref in refs:
            if ref is None:
                continue
            if ref not in found:
                found[ref] = models.resolve(ref, field)
            twin = seen.setdefault(found[ref].identity, ref)
            if twin != ref:  # two spellings of one model would plan every job twice
                raise BadInput(f"recipe {recipe.name}: {field}: {twin!r} and {ref!r} are the same "
                               f"model (identity {found[ref].identity[:16]}...); list it once")
    for ref in recipe.checkpoint:
        check_family(recipe, ref, models.family(found[ref]))
    return found


def check_family(recipe: recipes.Recipe, ref: str, family: models.Family) -> None:
    """Refuse recipe fields that this checkpoint's pipeline does not take."""
    problems = {
        "negative": ("negative_prompt", recipe.uses_negative(), "leave negative and "
                     "per-prompt negatives empty"),
        "cfg": ("guidance_scale", recipe.cfg != (recipes.DEFAULTS["cfg"],), "leave cfg unset"),
        "clip_skip": ("clip_skip", recipe.clip_skip != (1,), "leave clip_skip at 1"),
    }
    for field, (needs, used, fix) in problems.items():
        if used and needs not in family.takes:
            raise BadInput(f"recipe {recipe.name}: {field}: checkpoint {ref!r} is a "
                           f"{family.pipeline}, which takes no {needs}; {fix}")
