"""What the README, docs/*.md, the profiles' comments and the systemd files tell a user to type
exists in the code.

Links and anchors resolve; every repository path and agent./export. name mentioned exists; every
log line quoted is one the code logs; every config key named exists in agent.config, every YAML
config block validates, and a default or profile value given beside a key is the schema's or the
profile's; every ``palm-agent`` / ``palm-export`` / ``main.py`` subcommand and flag (by an
absolute path too, or in a command's trailing comment) is one the program takes, and so is every
flag of a ``python bench/X.py``, ``scripts/install.sh`` or ``scripts/demo.sh`` line; the training
flags table gives the parser's defaults; default.yaml's values are the schema's defaults; the MQTT
contract's topics, fields, commands, error codes and ACL example are the code's.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from agent.config import Config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROFILES = sorted((ROOT / "firmware_config").glob("*.yaml"))
UNITS = sorted((ROOT / "systemd").iterdir())
# fenced blocks and inline code spans (which may wrap a line)
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`]+)`", re.S)


def _ids(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _code(path: Path) -> list[str]:
    """Fenced blocks without their comments, inline spans on one line (markdown joins a wrapped
    one); a systemd unit's ``Exec*=`` command lines."""
    text = path.read_text(encoding="utf-8")
    if path.parent.name == "systemd":
        return re.findall(r"^Exec\w*=(.*)$", text, re.M)
    return [
        re.sub(r"(^|\s)#.*", r"\1", m.group(1), flags=re.M)
        if m.group(1) is not None
        else m.group(2).replace("\n", " ")
        for m in CODE.finditer(text)
    ]


def _commented_flags(path: Path) -> list[str]:
    """A fenced command line whose comment names more flags (``palm-export eval CKPT  # --part
    train, --out``), as the command with those flags: they must be the command's too."""
    lines = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            command, sep, comment = line.partition(" #")
            flags = re.findall(r"(?<![\w-])--[\w-]+", comment)
            if sep and command.strip() and flags:
                lines.append(" ".join([command.strip(), *flags]))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*)", line)):
            found.add(_slug(m.group(1)))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_relative_links_and_anchors_resolve(doc):
    bad = []
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not bad, bad


# a file of the repository named by its path, a module or one of its names by its dotted name
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:agent|export|tests|bench|scripts|systemd|firmware_config|docs)/[\w./-]*\w)"
)
DOTTED = re.compile(r"(?<![\w./-])((?:agent|export)(?:\.\w+)+)")
# agent.yaml, export.md: files, not modules
FILE_SUFFIXES = {"md", "yaml", "py", "c", "json", "sqlite", "key", "tar", "pem", "pub"}


def _bound(node: ast.stmt) -> set[str]:
    """The names a statement binds: a def, a class, an assignment, an import."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {a.asname or a.name for a in node.names}
    return set()


def _defines(tree: ast.AST, name: str) -> ast.stmt | None:
    """The statement of ``tree``'s body that binds ``name``, if any."""
    return next((n for n in getattr(tree, "body", []) if name in _bound(n)), None)


def _resolves(dotted: str) -> bool:
    """``agent.match.Thresholds.from_table`` names a module of this repository and, inside it,
    a name (a class's member too), read from the source: no import, so no torch."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        source = next(
            (f for f in (base.with_suffix(".py"), base / "__init__.py") if f.exists()), None
        )
        if source is not None:
            break
    else:
        return False
    node: ast.AST | None = ast.parse(source.read_text(encoding="utf-8"))
    for k, name in enumerate(parts[i:], start=i):
        node = _defines(node, name)
        if isinstance(node, ast.ImportFrom) and node.module:  # re-exported: where it comes from
            return _resolves(f"{node.module}.{'.'.join(parts[k:])}")
        if node is None:
            return False
    return True


@pytest.mark.parametrize("doc", DOCS + PROFILES + UNITS, ids=_ids)
def test_files_and_modules_named_exist(doc):
    """A path or a dotted name that no longer exists sends a reader to look for nothing."""
    text = doc.read_text(encoding="utf-8")
    missing = [p for p in REPO_PATH.findall(text) if not (ROOT / p.rstrip(".")).exists()]
    missing += [
        d
        for d in DOTTED.findall(text)
        if not _resolves(d) and d.rsplit(".", 1)[-1] not in FILE_SUFFIXES
    ]
    assert missing == []


def _log_formats() -> list[str]:
    """The format strings of every logging call in agent/ and export/."""
    levels = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    found = []
    for path in [*(ROOT / "agent").rglob("*.py"), *(ROOT / "export").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"
                and node.func.attr in levels
            ):
                found += [
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ][:1]
    return found


# a quoted log line: its first words, then key=value fields, perhaps "...", perhaps "; more text"
LOG_LINE = re.compile(r"([a-z_]+(?: [a-z_]+)*)((?: \w+=[^ ;]*)*)(?: \.\.\.| …)?(?:; (.*))?")


def test_log_lines_quoted_are_the_codes():
    """A log line the docs tell a user to look for (``mqtt held_dropped``, ``enroll
    duplicate_allowed subject=… matches=…``) begins a logging call's format string that has
    each of its ``key=`` fields: a renamed event would leave ``journalctl | grep`` finding
    nothing."""
    formats = _log_formats()
    first_words = {f.split(" ", 1)[0] for f in formats}
    quoted = {
        m.group(2)
        for doc in DOCS + PROFILES
        for m in CODE.finditer(doc.read_text(encoding="utf-8"))
        if m.group(2) is not None
    }
    bad = []
    for span in sorted(quoted):
        line = LOG_LINE.fullmatch(span.replace("\n", " "))
        if not line or line.group(1).split()[0] not in first_words:
            continue
        head, fields, tail = line.group(1), re.findall(r"(\w+)=", line.group(2)), line.group(3)
        if len(head.split()) == 1 and not fields:
            continue  # a word, not a line
        if not any(
            re.match(re.escape(head) + r"\b", f)
            and all(f"{k}=" in f for k in fields)
            and (tail or "") in f
            for f in formats
        ):
            bad.append(span)
    assert bad == []


def _known_key(key: str) -> bool:
    """``section.key[.sub]`` (``*`` a wildcard part) names a field of :class:`Config`."""
    model: type | None = Config
    for part in key.split("."):
        if model is None:
            return False
        pattern = re.compile("^" + re.escape(part).replace(r"\*", ".*") + "$")
        fields = [f for name, f in model.model_fields.items() if pattern.match(name)]
        if not fields:
            return False
        ann = fields[0].annotation
        model = ann if isinstance(ann, type) and hasattr(ann, "model_fields") else None
    return True


@pytest.mark.parametrize("doc", DOCS + PROFILES, ids=_ids)
def test_config_keys_named_exist_and_config_blocks_validate(doc):
    sections = set(Config.model_fields)
    text = doc.read_text(encoding="utf-8")
    named = {
        m.group(1)
        for m in re.finditer(r"`([a-z_]+(?:\.[a-z_*]+)+)(?::[^`]*)?`", text)
        if m.group(1).split(".")[0] in sections and not m.group(1).endswith(".py")
    }
    assert [k for k in sorted(named) if not _known_key(k)] == []
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        parse_config(yaml.safe_load(block), env={"PALM_MQTT_PASSWORD": "x"}, check_files=False)


def _subcommands(p: argparse.ArgumentParser) -> dict | None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


# programs whose flags are checked against their source: a flag must appear there as written
_FLAGS_IN_SOURCE = {
    "demo.sh": ("export/demo/args.py", '"{}"'),
    "install.sh": ("scripts/install.sh", "{})"),  # a case pattern: --venv) or -h|--help)
}


@pytest.mark.parametrize("doc", DOCS + PROFILES + UNITS, ids=_ids)
def test_command_lines_name_real_subcommands_and_flags(doc):
    from agent.cli import build_parser as agent_parser
    from export.cli import build_parser as export_parser
    from export.train_args import add_arguments as train_arguments

    train = argparse.ArgumentParser(prog="main.py")
    train_arguments(train)
    parsers = {"palm-agent": agent_parser(), "palm-export": export_parser(), "main.py": train}
    # a command (perhaps by its absolute path: /opt/palm-agent/venv/bin/palm-agent) and its
    # words up to the end of the line, a comment or a pipe; `\` continues
    command = re.compile(
        r"(?<![\w.-])(?:(?:/[\w.-]+)+/)?"
        r"(palm-agent|palm-export|main\.py|python bench/\w+\.py|(?:\./)?(?:scripts/)?"
        r"(?:demo|install)\.sh)"
        r"((?:[ \t]+(?:\\\n[ \t]*)?[^\s`|#)]+)*)"
    )
    bad = []
    for code in _code(doc) + _commented_flags(doc):
        for m in command.finditer(code):
            before = code[: m.start()].rsplit("\n", 1)[-1]
            if "systemctl" in before or "journalctl" in before:
                continue  # the unit palm-agent, not the program
            words = m.group(2).replace("\\\n", " ").split()
            program = m.group(1).rsplit("/", 1)[-1]
            if m.group(1).startswith("python ") or program in _FLAGS_IN_SOURCE:
                path, form = _FLAGS_IN_SOURCE.get(program) or (m.group(1).split()[1], '"{}"')
                source = (ROOT / path).read_text(encoding="utf-8")
                bad += [
                    f"{m.group(0)}: {w}"
                    for w in words
                    if w.startswith("--") and form.format(w.split("=")[0]) not in source
                ]
                continue
            p, used = parsers[program], [program]
            while words and (choices := _subcommands(p)) and words[0] in choices:
                used.append(words[0])
                p = choices[words.pop(0)]
            if _subcommands(p) is not None:
                if words and words[0] not in ("…", "..."):
                    bad.append(f"{' '.join(used)}: no subcommand {words[0]}")
                continue
            flags = {o for a in p._actions for o in a.option_strings}
            bad += [
                f"{' '.join(used)}: no flag {w}"
                for w in words
                if w.startswith("-") and len(w) > 1 and w.split("=")[0] not in flags
            ]
    assert not bad, bad


def test_default_profile_values_are_the_schema_defaults():
    doc = yaml.safe_load((ROOT / "firmware_config" / "default.yaml").read_text(encoding="utf-8"))
    documented = parse_config(doc, env={}, check_files=False)
    assert documented.model_dump(mode="json") == Config().model_dump(mode="json")


def _mqtt_md() -> str:
    return (ROOT / "docs" / "mqtt.md").read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def _first_json(text: str) -> dict:
    return json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))


def test_mqtt_topics_are_the_reporters(tmp_path):
    from agent.mqtt import MqttReporter
    from agent.outbox import Outbox

    cfg = parse_config({}, env={}, check_files=False)
    reporter = MqttReporter(cfg.mqtt, "palm-01", Outbox(tmp_path / "outbox.sqlite"))
    documented = set(re.findall(r"^\| `palm/<id>/(\w+)`", _mqtt_md(), re.M))
    assert documented == set(reporter.topics)


def test_mqtt_acl_example_lets_the_device_use_each_of_its_topics(tmp_path):
    """A broker set up from mqtt.md's ACL must let the device publish every topic it publishes
    and read its commands and Home Assistant's status; a topic it lacks is refused silently."""
    from agent.homeassistant import decision_entity
    from agent.mqtt import MqttReporter
    from agent.outbox import Outbox

    cfg = parse_config({}, env={}, check_files=False)
    reporter = MqttReporter(cfg.mqtt, "palm-01", Outbox(tmp_path / "outbox.sqlite"))
    ha = cfg.mqtt.homeassistant.discovery_prefix
    acl = _section(_mqtt_md(), "## Broker ACL")
    rules = re.findall(r"^topic (read|write)\s+(\S+)$", acl, re.M)
    assert rules and re.search(r"^user palm-01$", acl, re.M)
    wanted = [("read" if name == "cmd" else "write", t) for name, t in reporter.topics.items()]
    wanted += [("write", decision_entity(ha, "palm-01", "", "", reporter.topics)[0])]
    wanted += [("read", f"{ha}/status")]
    missing = [
        (access, topic)
        for access, topic in wanted
        if not any(
            a == access and (r == topic or (r.endswith("/#") and topic.startswith(r[:-1])))
            for a, r in rules
        )
    ]
    assert missing == []


def _first_column(table: str) -> set[str]:
    """The backticked names in the first cell of each table row (``| `a` / `b` | ...``), the
    header rows left out."""
    names: set[str] = set()
    lines = table.splitlines()
    for line, after in zip(lines, [*lines[1:], ""], strict=True):
        cell = re.match(r"\| ((?:`\w+`(?: / )?)+) \|", line)
        if cell and not after.startswith("|---"):
            names |= set(re.findall(r"`(\w+)`", cell.group(1)))
    return names


def test_mqtt_decision_and_stats_documents_have_the_documented_fields(tmp_path):
    from agent.daemon import Daemon
    from agent.decide import Decider, Probe, Settings
    from agent.mqtt import MqttReporter
    from agent.outbox import Outbox

    section = _section(_mqtt_md(), "## decision")
    example = _first_json(section)
    doc = Decider(None, "palm-01", "0" * 64).document(  # type: ignore[arg-type]
        Settings("multi", True, None), Probe(), time.monotonic(), error="no_probe"
    )
    assert set(example) == {*doc, "agreement"}  # agreement: added when match.agreement holds
    described = _first_column(section)
    assert described <= set(example) and set(example) - described <= {"schema", "device"}

    cfg = parse_config({}, env={}, check_files=False)
    reporter = MqttReporter(cfg.mqtt, "palm-01", Outbox(tmp_path / "outbox.sqlite"))
    engine = SimpleNamespace(model_hash="0" * 64, modalities=("print", "vein"), weights_sha256=None)
    daemon = Daemon(
        cfg,
        reporter,
        SimpleNamespace(state="ok", modalities=("print", "vein")),  # type: ignore[arg-type]
        SimpleNamespace(list=list, check_weights=lambda digest, bundle, manifest=None: None),
        load_engine=lambda _: engine,  # type: ignore[arg-type,return-value]
        rekey=dict,
    )
    assert set(_first_json(_section(_mqtt_md(), "## stats"))) == set(daemon.stats())


def test_mqtt_reasons_commands_and_error_codes_are_the_codes():
    from agent import quality
    from agent.commands import REGISTRY
    from agent.decide import NO_AGREEMENT

    text = _mqtt_md()
    reason_row = re.search(r"^\| `reason` \|(.*)$", text, re.M).group(1)
    matcher = {"match", "no_match", "not_enrolled", "empty_gallery"}  # agent.match.Decision
    assert set(re.findall(r"`(\w+)`", reason_row)) == {
        *matcher,
        "error",
        *quality.REASONS,
        "no_probe",
        NO_AGREEMENT,
    }
    commands, errors = _section(text, "## Commands").split("\nErrors:\n", 1)
    assert _first_column(commands) == set(REGISTRY)
    codes = set(re.findall(r'_error\(\s*"(\w+)"', (ROOT / "agent/commands.py").read_text()))
    for path in (ROOT / "agent").glob("mqtt*.py"):  # the transport's own refusals
        codes |= set(re.findall(r'"code": "(\w+)"', path.read_text()))
    assert _first_column(errors) == codes


def test_training_flags_table_gives_the_parsers_defaults_and_choices():
    """training.md's table of ``palm-export train`` flags lists each one with the parser's
    default and every choice it takes."""
    from export.train_args import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    by_flag = {o: a for a in parser._actions for o in a.option_strings}
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    table = _section(text, "## Flags (`palm-export train --help`)")
    rows = re.findall(r"^\| (`-.*?) \|\s*(.*?)\s*\|\s*(.*?)\s*\|$", table, re.M)
    listed = {by_flag[f] for cell, _, _ in rows for f in re.findall(r"`(-[\w-]+)", cell)}
    assert [a.option_strings for a in parser._actions if a not in listed] == [["-h", "--help"]]
    bad = []
    for flags_cell, defaults_cell, what in rows:
        actions = list(dict.fromkeys(by_flag[f] for f in re.findall(r"`(-[\w-]+)", flags_cell)))
        defaults = defaults_cell.split(", ") if defaults_cell else [""] * len(actions)
        for action, stated in zip(actions, defaults, strict=True):
            word = stated.split(" ", 1)[0]
            if re.fullmatch(r"[\d.e+-]+", word):  # a number
                ok = action.default is not None and float(word) == float(action.default)
            elif re.fullmatch(r"\w+", word):  # a name (a choice, "cuda if present")
                ok = word == action.default or (action.default is None and "if" in stated)
            elif word == "":  # none, or a switch's off
                switch = action.nargs == 0 and action.const is not None
                ok = switch or action.default in (None, "")
            else:  # `$PALM_DATA` or `./data`: said in words
                continue
            if not ok:
                bad.append(f"{action.option_strings[-1]}: {stated!r}, parser {action.default!r}")
            bad += [
                f"{action.option_strings[-1]}: choice {c} not listed"
                for c in action.choices or ()
                if str(c) not in what
            ]
    assert bad == []


def _value(cfg: Config, key: str) -> object:
    node: object = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.parametrize("doc", DOCS, ids=_ids)
def test_config_values_stated_are_the_schemas_and_profiles(doc):
    """A default given beside a key (``outbox.max_messages (10,000)``, ``bundle.threads (4 in
    the profile, 2 by default)``) is the schema's; a deployment page's table of profile values
    is its profile's."""
    text = doc.read_text(encoding="utf-8")
    defaults, bad = Config(), []
    page = doc.name.removeprefix("deploy-").removesuffix(".md")
    name = {"pi": "raspberry-pi"}.get(page, page)
    profile = ROOT / "firmware_config" / f"{name}.yaml"
    cfg = (
        load_config(profile, env={}, check_files=False, unused=("mqtt",))
        if profile.exists()
        else None
    )

    def differs(key: str, stated: str, where: Config) -> bool:
        value = _value(where, key)
        if isinstance(value, bool) or not re.fullmatch(r"[\d,.]+", stated):
            return str(value).lower() != stated.lower()
        return _number(stated) != value

    key, flat = r"`([a-z_]+(?:\.[a-z_]+)+)`", text.replace("\n", " ")
    for m in re.finditer(key + r"(?: [a-z]+)? \((\d[\d,]*(?:\.\d+)?)\)", flat):
        if differs(m.group(1), m.group(2), defaults):
            bad.append(f"{m.group(0)}: default {_value(defaults, m.group(1))}")
    for m in re.finditer(key + r" \(([\d.]+) in the profile, ([\d.]+) by default\)", flat):
        if differs(m.group(1), m.group(3), defaults) or (
            cfg and differs(m.group(1), m.group(2), cfg)
        ):
            bad.append(m.group(0))
    table = re.search(r"\| key \| profile value \| what \|\n\|---.*?\n((?:\|.*\n)+)", text)
    if table:
        assert cfg is not None, f"no profile {profile.name} for {doc.name}"
        for keys, values in re.findall(r"^\| (.*?) \| (.*?) \|", table.group(1), re.M):
            stated = re.sub(r" \(.*\)", "", values).split(" / ")
            for key_name, value in zip(re.findall(r"`([\w.]+)`", keys), stated, strict=True):
                if differs(key_name, value.strip(), cfg):
                    bad.append(f"{key_name}: {value} here, {_value(cfg, key_name)} in {name}")
    assert bad == []
