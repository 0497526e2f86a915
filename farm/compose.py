"""Recipes composed with Hydra into typed settings; the only module that touches Hydra.

A recipe name finds recipes/NAME.yaml in the working directory, then farm's examples. A recipe
may start with a defaults list that pulls pieces from config groups:

    defaults: [{models: sdxl}, {quality: draft}, {prompts: animals}, _self_]

A group is a folder of conf/ (`conf/quality/draft.yaml`): in a folder given with --config-dir
(or $FARM_CONFIG_DIR), then ./conf, then farm's own. A group file holds recipe fields and merges
at the recipe's top level (as if it carried Hydra's `# @package _global_`); the `runtime` group
holds runtime settings. Hydra composes farm's defaults for every field, the runtime group, the
recipe's defaults list and the command-line overrides (`field=value`, `group=option`,
`+group=option`), in Hydra's order: the recipe's own fields after `_self_` win (by default
`_self_` is last). The result is checked by recipe.parse; nothing in it is ever evaluated.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from farm import recipe as recipes
from farm.outputs import RunFolder
from farm.schedule import Runtime

DEFAULT_RECIPE = "demo"
OUTPUTS = "outputs"  # where run folders go: a setting, not a recipe field
SETTINGS = ("runtime", OUTPUTS)  # config keys that are not recipe fields
RUNTIME = "runtime"  # the group of runtime settings (the others hold recipe fields)
RUNTIMES = ("ray", "inline")  # the runtime group's built-in options
PRIMARY = "__recipe__"  # the recipe, as the primary config Hydra composes
DEFAULTS_NODE = "_farm_defaults_"  # every recipe field's default, composed first


class BadInput(Exception):
    """Anything wrong with what the user asked for; reported before anything is written."""


@dataclass(frozen=True)
class Settings:
    recipe: recipes.Recipe
    runtime: Runtime
    outputs: Path  # the folder that holds run folders
    resolved: str  # the composed config as YAML, with the group choices, saved with each run

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.outputs / self.recipe.name, self.recipe.image)


# 1. where recipes and config groups are found ----------------------------------------------------

def examples(kind: str) -> Path | None:
    """farm's own recipes/ or conf/: inside an installed package (copied there when the wheel
    is built), or beside the package in a clone; one source of truth either way."""
    inside = resources.files("farm") / "examples" / kind
    if inside.is_dir():
        return Path(str(inside))
    beside = Path(__file__).resolve().parent.parent / kind
    return beside if beside.is_dir() else None


def find_recipe(ref: str) -> Path:
    """recipes/NAME.yaml in the working directory, then farm's examples; or a path."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise BadInput(f"recipe: {ref!r}: no such file")
        return path
    folders = [Path("recipes"), *filter(None, [examples("recipes")])]
    for folder in folders:
        if (folder / f"{ref}.yaml").is_file():
            return folder / f"{ref}.yaml"
    known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
    raise BadInput(f"recipe: {ref!r}: not found in ./recipes or farm's examples; "
                   f"known recipes: {', '.join(known)}; or give a path to a .yaml file")


def config_dirs(config_dir: str | Path | None = None) -> list[Path]:
    """Where config groups are looked up, first found first: --config-dir (or
    $FARM_CONFIG_DIR), ./conf, then farm's own."""
    given = config_dir or os.environ.get("FARM_CONFIG_DIR")
    if given and not Path(given).is_dir():
        raise BadInput(f"--config-dir: {str(given)!r}: no such folder")
    found = [Path(given)] if given else []
    if Path("conf").is_dir():
        found.append(Path("conf"))
    own = examples("conf")
    return found + ([own] if own else [])


def load_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping (safe YAML: no tags, no code)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadInput(f"{what} {path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"{what} {path}: expected a mapping of recipe fields, got {data!r}")
    return data


def load_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe file as plain data: recipe fields and an optional defaults list."""
    data = load_yaml(path, "recipe")
    unknown = sorted(set(data) - set(recipes.DEFAULTS) - {"defaults"})
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(recipes.DEFAULTS), n=1)
        raise BadInput(f"recipe {path}: {unknown[0]}: unknown field" + (
            f"; did you mean {close[0]!r}?" if close else "") + f" (allowed: defaults, "
            f"{', '.join(recipes.DEFAULTS)})")
    listed = [group for group, _ in _entries(data.get("defaults"), f"recipe {path}")]
    twice = [group for group in listed if listed.count(group) > 1]
    if twice:
        raise BadInput(f"recipe {path}: defaults: the group {twice[0]!r} is listed twice; a "
                       "recipe chooses one option of a group (a +GROUP=OPTION override adds "
                       "to what it lists)")
    return data


# 2. config groups, staged for Hydra --------------------------------------------------------------

@dataclass
class Groups:
    """Every group option found, with the file that gives it, and its own defaults list."""

    files: dict[str, dict[str, Path]]  # group -> option -> file
    needs: dict[tuple[str, str], list[tuple[str, str]]]  # (group, option) -> what it pulls in

    def options(self, group: str) -> list[str]:
        return sorted(self.files.get(group, {})) + (list(RUNTIMES) if group == RUNTIME else [])

    def check(self, group: str, option: Any, where: str) -> None:
        """An unknown group or option names the group and lists what there is."""
        known = sorted({*self.files, RUNTIME})
        if group not in known:
            raise BadInput(f"{where}: no config group {group!r}; groups: {', '.join(known)} "
                           "(folders of conf/)")
        if option is not None and str(option) not in self.options(group):
            raise BadInput(f"{where}: config group {group!r} has no option {option!r}; "
                           f"options: {', '.join(self.options(group))}")


def stage(sources: list[Path], staged: Path) -> Groups:
    """Copy every group file into one folder for Hydra (the first source that has an option
    gives it), checked, with the header that merges it at the top level; defaults entries in a
    group file name other groups from the top (`{models: sd15}` is /models/sd15)."""
    files: dict[str, dict[str, Path]] = {}
    for source in sources:
        for path in sorted(source.glob("*/*.yaml")):
            if path.parent.name in recipes.DEFAULTS or path.parent.name == OUTPUTS:
                raise BadInput(f"config group folder {path.parent}: {path.parent.name!r} is a "
                               "recipe field, so name=value could mean either; give the group "
                               "another name")
            files.setdefault(path.parent.name, {}).setdefault(path.stem, path)
    needs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    allowed = {RUNTIME: [f.name for f in fields(Runtime)]}
    for group, options in files.items():
        for option, path in options.items():
            data = load_yaml(path, "config group file")
            keys = allowed.get(group, list(recipes.DEFAULTS))
            unknown = sorted(set(data) - set(keys) - {"defaults"})
            if unknown:
                raise BadInput(f"config group file {path}: {unknown[0]}: not a "
                               f"{'runtime setting' if group == RUNTIME else 'recipe field'}; "
                               f"allowed: {', '.join(keys)}")
            given = data.get("defaults")
            pulled = _entries(given, f"config group file {path}")
            needs[(group, option)] = pulled
            if pulled:  # from the top of conf/; the file's own _self_ where it put it (last, by
                listed = given if "_self_" in given else [*given, "_self_"]  # Hydra's default)
                data["defaults"] = [entry if entry == "_self_" else
                                    {"/" + str(next(iter(entry))).lstrip("/"): next(iter(
                                        entry.values()))} for entry in listed]
            if group == RUNTIME:  # every setting there, so runtime=OPTION takes runtime.NAME=...
                data = {**{f.name: f.default for f in fields(Runtime)}, **data}
            header = "" if group == RUNTIME else "# @package _global_\n"
            target = staged / group / f"{option}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return Groups(files, needs)


def _entries(defaults: Any, where: str) -> list[tuple[str, str]]:
    """(group, option) of each entry of a defaults list; `_self_` is left out."""
    if defaults is None:
        return []
    if not isinstance(defaults, list):
        raise BadInput(f"{where}: defaults: expected a list such as [{{models: sd15}}, _self_]")
    found = []
    for entry in defaults:
        if entry == "_self_":
            continue
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise BadInput(f"{where}: defaults: {entry!r}: expected {{GROUP: OPTION}} or _self_")
        (group, option), = entry.items()
        found.append((str(group).lstrip("/"), option))
    return found


def check_cycles(groups: Groups, chosen: list[tuple[str, str]], where: str) -> None:
    """A defaults list that pulls in itself, directly or through other groups, is refused
    (Hydra would recurse without end)."""
    def visit(node: tuple[str, str], trail: list[tuple[str, str]]) -> None:
        if node in trail:
            loop = " -> ".join(f"{g}/{o}" for g, o in trail[trail.index(node):] + [node])
            raise BadInput(f"{where}: the defaults lists form a cycle: {loop}")
        for child in groups.needs.get(node, []):
            visit(child, trail + [node])

    for node in chosen:
        visit(node, [])


# 3. overrides and interpolation ------------------------------------------------------------------

@dataclass
class Overrides:
    """The command line's overrides, checked and sorted."""

    hydra: list[str]  # what Hydra applies: fields, settings, group choices
    chosen: list[tuple[str, str]]  # (group, option) chosen or added


def check_overrides(overrides: list[str], groups: Groups) -> Overrides:
    """Name the field when an override is not one (Hydra's own message suggests '+key'), and
    the group and its options when a group choice is not one; refuse Hydra's sweeps (farm
    renders one run, in which a list is an axis)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise BadInput(f"command line: {e}") from None
    found = Overrides([], [])
    group_names = sorted({*groups.files, RUNTIME})
    allowed = [*recipes.DEFAULTS, *SETTINGS]
    for text, override in zip(overrides, parsed):
        key, where = override.key_or_group, f"command line: {override.input_line!r}"
        root = key.split(".")[0]
        if override.is_sweep_override():
            raise BadInput(f"{where}: a Hydra sweep would make one run per value; farm renders "
                           f"one run in which a list is an axis: {key}='[...]' (e.g. "
                           "'steps=[2,4]', quoted for your shell)")
        value = None if override.is_delete() else override.value()
        if key == RUNTIME and value is None:
            raise BadInput(f"{where}: a render needs a runtime; options: "
                           f"{', '.join(groups.options(RUNTIME))}")
        found.hydra.append(text)
        if key in group_names or (override.is_add() and "." not in key):
            if not override.is_delete():
                groups.check(key, value if isinstance(value, str) else None, where)
                found.chosen.append((key, str(value)))
            continue
        if root not in allowed or override.package is not None:
            close = difflib.get_close_matches(root, allowed + group_names, n=1)
            raise BadInput(f"{where}: unknown field {root!r}" + (
                f"; did you mean {close[0]!r}?" if close else "") + f" (fields: "
                f"{', '.join(allowed)}; config groups: {', '.join(group_names)})")
        if root == OUTPUTS and override.is_delete():
            raise BadInput(f"{where}: {root} cannot be dropped; set it, e.g. {root}=DIR")
    return found


INLINE_CONFIG = re.compile(r"(?P<key>checkpoint|vae)=(?P<value>[^\"'\[{][^\"']*\?config=[^\"']*)")


def quote_inline_config(arg: str) -> str:
    """`checkpoint=FILE.safetensors?config=REF` as typed: Hydra's grammar takes neither `?` nor
    a second `=` in a bare value, so the value is quoted for it (lists must quote each item)."""
    found = INLINE_CONFIG.fullmatch(arg)
    return f'{found["key"]}="{found["value"]}"' if found else arg


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
        try:
            inners = _interpolations(config)
        except ValueError as e:
            raise BadInput(f"recipe {recipe}: {field}: got {config!r}; {e} (write \\${{ for a "
                           "literal ${)") from None
        for inner in inners:
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
        else:
            raise ValueError(f"the ${{ at character {at + 1} is never closed")
        found.append(text[at + 2:end])
        start = end + 1
    return found


# 4. composing ------------------------------------------------------------------------------------

def compose(args: list[str], config_dir: str | Path | None = None) -> Settings:
    """A recipe + config groups + command-line overrides, composed by Hydra, then checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    # 1. the recipe, its defaults list and the overrides, each checked
    recipe_ref = DEFAULT_RECIPE
    overrides = []
    for arg in args:
        if arg.startswith("recipe="):
            recipe_ref = arg.split("=", 1)[1]
        else:
            overrides.append(quote_inline_config(arg))
    path = find_recipe(recipe_ref)
    data = load_recipe_file(path)
    check_interpolations({k: v for k, v in data.items() if k != "defaults"}, path.stem)
    with tempfile.TemporaryDirectory(prefix="farm-compose-") as scratch:
        staged = Path(scratch)
        groups = stage(config_dirs(config_dir), staged)
        given = data.pop("defaults", None)
        listed = _entries(given, f"recipe {path}")
        for group, option in listed:
            groups.check(group, option, f"recipe {path}: defaults")
        given_overrides = check_overrides(overrides, groups)
        check_cycles(groups, listed + given_overrides.chosen, f"recipe {path}")
        # 2. the primary config: farm's defaults, the runtime, the recipe's groups, the recipe
        entries = list(given or [])
        if not any(g == RUNTIME for g, _ in listed):
            entries.insert(0, {RUNTIME: "ray"})
        if "_self_" not in entries:
            entries.append("_self_")  # Hydra's default: the recipe's own fields win
        primary = {"defaults": [DEFAULTS_NODE, *entries], **data}
        (staged / f"{PRIMARY}.yaml").write_text(yaml.safe_dump(primary, sort_keys=False,
                                                               allow_unicode=True))
        store = ConfigStore.instance()
        for name in RUNTIMES:
            store.store(group=RUNTIME, name=name, node=Runtime(kind=name))
        store.store(name=DEFAULTS_NODE, package="_global_", node={
            **recipes.DEFAULTS, "name": path.stem, "outputs": "outputs"})
        # 3. Hydra composes
        try:
            with initialize_config_dir(config_dir=str(staged.resolve()), version_base=None):
                cfg = hydra_compose(PRIMARY, overrides=given_overrides.hydra,
                                    return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            said = str(e).strip() or f"{type(e).__name__} while Hydra composed it"
            raise BadInput(f"command line: {' '.join(overrides)}: recipe {path}: {said}") \
                from None
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items()
               if not k.startswith("hydra/") and k != DEFAULTS_NODE}
    composed = OmegaConf.to_container(cfg, resolve=False)
    del composed["hydra"]
    # 4. recipes are data: no resolver runs; then the typed settings
    check_interpolations(composed, path.stem)
    try:
        config = OmegaConf.to_container(OmegaConf.create(composed), resolve=True)
        runtime = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Runtime),
                                                      config.pop(RUNTIME)))
    except OmegaConfBaseException as e:
        raise BadInput(f"recipe {path.stem}: {e}".strip()) from None
    outputs = Path(str(config.pop("outputs")))
    recipe = recipes.parse(config, source=path.stem, base=path.parent)
    resolved = yaml.safe_dump({"recipe": str(path.resolve()), "base": str(path.parent.resolve()),
                               "overrides": overrides, "choices": choices, **config,
                               "runtime": OmegaConf.to_container(OmegaConf.structured(runtime))},
                              sort_keys=False, allow_unicode=True)
    return Settings(recipe=recipe, runtime=runtime, outputs=outputs, resolved=resolved)


def runtime_of(args: list[str]) -> Runtime:
    """The runtime settings of a command that reads a run folder rather than a recipe (farm
    score): runtime=ray|inline and runtime.NAME=VALUE, as a render takes them."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    kind, settings = "ray", []
    for arg in args:
        name, sep, value = arg.partition("=")
        if name == RUNTIME and sep:
            if value not in RUNTIMES:
                raise BadInput(f"runtime: got {value!r}; allowed: {', '.join(RUNTIMES)}")
            kind = value
        elif name.startswith(f"{RUNTIME}.") and sep:
            settings.append(f"{name.removeprefix(RUNTIME + '.')}={value}")
        else:
            raise BadInput(f"{arg!r}: expected runtime=ray|inline or runtime.NAME=VALUE")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Runtime(kind=kind)),
                                                   OmegaConf.from_dotlist(settings)))
    except OmegaConfBaseException as e:
        raise BadInput(f"{' '.join(args)}: {e}".strip()) from None
