"""Recipe files composed with Hydra into typed settings; the only module that touches Hydra.

A recipe name finds recipes/NAME.yaml in the working directory, then farm's packaged examples.
The recipe file, farm's defaults for every recipe field and the structured `runtime` group are
composed by Hydra with the command-line overrides; the result is checked by recipe.parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from farm import recipe as recipes
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


REFERENCE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_interpolations(config: Any, recipe: str, field: str = "") -> None:
    """A recipe is data: `${field}` may refer to another recipe field (Hydra composition), but
    no resolver runs (`${oc.env:HOME}` would read the environment) and nothing else is
    evaluated. `\\${` writes a literal `${`; a lone `$` is just a character."""
    if isinstance(config, dict):
        for key, value in config.items():
            check_interpolations(value, recipe, f"{field}.{key}" if field else str(key))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_interpolations(value, recipe, f"{field}[{index}]")
    elif isinstance(config, str):
        for inner in _interpolations(config):
            allowed = ("a recipe is data: ${...} may only name another recipe field (e.g. "
                       "${size}); write \\${ for a literal ${")
            if ":" in inner or "${" in inner:
                raise BadInput(f"recipe {recipe}: {field}: got {config!r}; ${{{inner}}} calls a "
                               f"resolver, which farm never runs; {allowed}")
            root = inner.split(".")[0]
            if not REFERENCE.fullmatch(inner) or root not in (*recipes.DEFAULTS, *SETTINGS):
                raise BadInput(f"recipe {recipe}: {field}: got {config!r}; ${{{inner}}} names "
                               f"no recipe field; {allowed}")


def _interpolations(text: str) -> list[str]:
    """The insides of the `${...}` of a string (outermost only), skipping escaped `\\${`."""
    found, start = [], 0
    while (at := text.find("${", start)) >= 0:
        if at and text[at - 1] == "\\":
            start = at + 2
            continue
        depth, end = 0, at
        for end in range(at, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0 and text[end] == "}":
                break
        found.append(text[at + 2:end])
        start = end + 1
    return found


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
    except (HydraException, OmegaConfBaseException) as e:
        raise BadInput(f"command line: {e}".strip()) from None
    check_interpolations(OmegaConf.to_container(cfg, resolve=False), path.stem)
    try:
        runtime = OmegaConf.to_object(cfg.runtime)
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise BadInput(f"recipe {path.stem}: {e}".strip()) from None
    del config["runtime"]
    outputs = Path(str(config.pop("outputs")))
    recipe = recipes.parse(config, source=path.stem, base=path.parent)
    resolved = yaml.safe_dump({"recipe": str(path.resolve()), "base": str(path.parent.resolve()),
                               "overrides": overrides, **config,
                               "runtime": OmegaConf.to_container(cfg.runtime)},
                              sort_keys=False, allow_unicode=True)
    return Settings(recipe=recipe, runtime=runtime, outputs=outputs, resolved=resolved)
