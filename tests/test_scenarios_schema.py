"""The scenario format: every kind of mistake is one `file:line: what is wrong` error.

Each test writes a small scenario file with one mistake and checks the error
names the file, the exact line of the mistake and what is wrong.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.cli import main
from harness.scenarios import ScenarioError, load_library, load_scenario
from harness.scenarios._yaml import parse_text

GOOD = """\
name: {name}
description: a write reads back
spec: ["Request types"]
roles: [server]
steps:
  - connect: {{}}
  - write: {{offset: 0, length: 64k}}
  - read: {{offset: 0, length: 64k}}
"""


def write(tmp_path: Path, text: str, name: str = "sample") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, name: str = "sample") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_a_good_scenario_loads_with_step_lines(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, GOOD.format(name="sample")))
    assert scenario.name == "sample"
    assert [s.action for s in scenario.steps] == ["connect", "write", "read"]
    assert [s.line for s in scenario.steps] == [6, 7, 8]
    assert scenario.steps[1].args == {"offset": 0, "length": 65536}  # sizes become bytes
    assert scenario.export.spec.size == 4 * 1024 * 1024
    assert scenario.roles == ("server",)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # unknown action, with a suggestion
        (GOOD.replace("  - read:", "  - raed:"), 8, ["steps[2]", "unknown action 'raed'",
                                                      "did you mean 'read'"]),
        # a size that is not a size
        (GOOD.replace("length: 64k}}\n  - read", "length: 64q}}\n  - read"), 7,
         ["steps[1].write.length", '"64q" is not a size']),
        # unknown key beside the action
        (GOOD.replace("  - read: {{offset: 0, length: 64k}}",
                      "  - read: {{offset: 0, length: 64k}}\n    expcet: {{}}"), 9,
         ["unknown key 'expcet'", "did you mean 'expect'"]),
        # unknown argument of an action
        (GOOD.replace("write: {{offset: 0, length: 64k}}", "write: {{offset: 0, lenght: 4k}}"),
         7, ["steps[1].write.lenght", "unknown key", "did you mean 'length'"]),
        # two actions in one step
        (GOOD.replace("  - read: {{offset: 0, length: 64k}}",
                      "  - read: {{offset: 0, length: 64k}}\n    flush: {{}}"), 9,
         ["one action per step", "'read' and 'flush'"]),
        # a wrong constant name
        (GOOD.replace("  - read: {{offset: 0, length: 64k}}",
                      "  - read: {{offset: 0, length: 64k}}\n    expect: {{error: NBD_EINVALL}}"),
         9, ["steps[2].expect.error", '"NBD_EINVALL" is not one of the Errno names',
             "did you mean 'NBD_EINVAL'"]),
        # a wrong type
        (GOOD.replace("roles: [server]", "roles: server"), 4,
         ["roles: expected a list, got \"server\""]),
        # an enum value
        (GOOD.replace("roles: [server]", "roles: [sever]"), 4,
         ['roles[0]: "sever" is not one of: server, client', "did you mean 'server'"]),
        # a missing required key
        (GOOD.replace('spec: ["Request types"]\n', ""), 1, ["missing required key 'spec'"]),
        # an unknown top-level key
        (GOOD + "setps: []\n", 9, ["unknown key 'setps'", "did you mean 'steps'"]),
        # a name that is not a name
        (GOOD.replace("name: {name}", "name: Sample_1"), 1,
         ['name: "Sample_1" is not allowed: lower-case words']),
    ],
)
def test_schema_errors_name_the_line(tmp_path: Path, text: str, line: int,
                                     words: list[str]) -> None:
    message = error_of(tmp_path, text.format(name="sample"))
    assert message.startswith(f"{tmp_path / 'sample.yaml'}:{line}: "), message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("name: x\nname: y\n", 2, ["key 'name' is given twice", "first on line 1"]),
        ("name: [unclosed\n", 2, ["not valid YAML"]),
        ("", 1, ["the file is empty"]),
        ("name: a\n---\nname: b\n", 2, ["more than one YAML document"]),
    ],
)
def test_yaml_level_errors(tmp_path: Path, text: str, line: int, words: list[str]) -> None:
    message = error_of(tmp_path, text)
    assert f"sample.yaml:{line}: " in message, message
    for word in words:
        assert word in message, message


def test_on_and_off_stay_words() -> None:
    value, lines = parse_text("tls: off\nflag: on\nreal: true\nno: yes\n", "x.yaml")
    assert value == {"tls": "off", "flag": "on", "real": True, "no": "yes"}
    assert lines.line(("real",)) == 3


CROSS_CHECKS = [
    # the name must be the file name
    (GOOD.replace("name: {name}", "name: other"), 1, ["must match the file name (sample.yaml)"]),
    # a step that needs a feature the scenario does not list
    (GOOD.replace("  - read: {{offset: 0, length: 64k}}", "  - trim: {{offset: 0, length: 4k}}"),
     8, ["'trim' needs the server feature(s) trim", "requires.server"]),
    # a flag that needs a feature
    (GOOD.replace("  - read: {{offset: 0, length: 64k}}",
                  "  - read: {{offset: 0, length: 4k, flags: [NBD_CMD_FLAG_DF]}}"),
     8, ["needs the server feature(s) df"]),
    # a context that needs a feature
    (GOOD.replace("  - connect: {{}}", '  - connect: {{contexts: ["base:allocation"]}}'), 6,
     ["needs the server feature(s) base-allocation"]),
    # an unknown feature id
    (GOOD.replace("roles: [server]", "requires: {{server: [trimm]}}\n"
                  "fallback: {{outcome: unsupported}}\nroles: [server]"), 4,
     ["unknown feature id 'trimm'", "(did you mean trim?)"]),
    # a feature the side does not have in features.toml
    (GOOD.replace("roles: [server]", "requires: {{client: [multi-conn-writable]}}\n"
                  "fallback: {{outcome: unsupported}}\nroles: [server]"), 4,
     ["feature 'multi-conn-writable' has no client role"]),
    # requires without a fallback
    (GOOD.replace("roles: [server]", "requires: {{server: [flush]}}\nroles: [server]"), 4,
     ["say what happens without them"]),
    # a fallback without requires
    (GOOD.replace("roles: [server]", "fallback: {{outcome: unsupported}}\nroles: [server]"), 4,
     ["a fallback without requires can never apply"]),
    # an expected fallback that expects nothing
    (GOOD.replace("roles: [server]", "requires: {{server: [flush]}}\n"
                  "fallback: {{outcome: expected-fallback}}\nroles: [server]"), 5,
     ["says what still must hold"]),
    # a spec section that does not exist
    (GOOD.replace('spec: ["Request types"]', 'spec: ["Request typos"]'), 3,
     ["'Request typos' is not a section heading"]),
    # a role without steps
    (GOOD.replace("roles: [server]", "roles: [server, client]"), 4,
     ["roles lists client but there are no client_steps"]),
    # steps for a role not listed
    (GOOD + "client_steps:\n  - client_action: {{action: info}}\n", 9,
     ["client_steps given but roles does not list client"]),
    # a connection used before it is opened
    (GOOD.replace("  - read: {{offset: 0, length: 64k}}",
                  '  - read: {{offset: 0, length: 64k}}\n    "on": second'), 8,
     ["uses connection 'second', which no earlier step opens"]),
    # export data not aligned to 64 KiB
    (GOOD + "export:\n  data:\n    - {{offset: 0, length: 64k}}\n"
            "    - {{offset: 1000, length: 4k}}\n",
     12, ["export.data[1]: 1000+4096 is not aligned to 64 KiB"]),
    (GOOD + "export:\n  size: 1M\n  layers:\n    - [{{offset: 960k, length: 128k}}]\n", 12,
     ["export.layers[0][0]: 983040+131072 is not inside the 1048576-byte export"]),
    # export block sizes the reference server's rules refuse
    (GOOD + "export:\n  min_block_size: 3000\n", 9,
     ["min_block_size 3000 must be a power of two"]),
    # a memory export with two layers
    (GOOD + "export:\n  layers: [[], []]\n", 10, ["a memory export has one layer"]),
    # extents computed from a bitmap the export does not have
    (GOOD.replace("roles: [server]", "requires: {{server: [dirty-bitmap]}}\n"
                  "fallback: {{outcome: unsupported}}\nroles: [server]").replace(
        "  - read: {{offset: 0, length: 64k}}",
        '  - map: {{context: "qemu:dirty-bitmap:b9"}}\n    expect: {{extents: export}}'), 10,
     ["the export has no such bitmap"]),
    # a client action missing its range
    ('name: {name}\ndescription: d\nspec: ["Request types"]\nroles: [client]\n'
     "client_steps:\n  - client_action: {{action: read}}\n", 6,
     ["client action 'read' needs offset and length"]),
]


@pytest.mark.parametrize(("text", "line", "words"), CROSS_CHECKS)
def test_cross_checks_name_the_line(tmp_path: Path, text: str, line: int,
                                    words: list[str]) -> None:
    message = error_of(tmp_path, text.format(name="sample"))
    assert f"sample.yaml:{line}: " in message, message
    for word in words:
        assert word in message, message


def test_a_refused_connect_needs_no_tls(tmp_path: Path) -> None:
    text = GOOD.replace("  - connect: {{}}", "  - connect: {{tls: require}}\n"
                        "    expect: {{error: tls}}\n  - connect: {{}}")
    scenario = load_scenario(write(tmp_path, text.format(name="sample")))
    assert scenario.steps[0].expect == {"error": "tls"}


def test_duplicate_names_in_a_library(tmp_path: Path) -> None:
    for group in ("a", "b"):
        (tmp_path / group).mkdir()
        (tmp_path / group / "same.yaml").write_text(GOOD.format(name="same"))
    with pytest.raises(ScenarioError, match=r"same.yaml:1: scenario name 'same' is also used by"):
        load_library(tmp_path)


def test_cli_validate_reports_each_bad_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "good.yaml").write_text(GOOD.format(name="good"))
    (tmp_path / "g" / "bad.yaml").write_text(
        GOOD.format(name="bad").replace("length: 64k}\n  - read", "length: 64q}\n  - read"))
    assert main(["scenarios", "--dir", str(tmp_path), "validate"]) == 1
    out, err = capsys.readouterr()
    assert "1 of 2 scenario file(s) valid" in out
    assert "bad.yaml:7: steps[1].write.length" in err
    assert main(["scenarios", "--dir", str(tmp_path), "validate",
                 str(tmp_path / "g" / "good.yaml")]) == 0


def test_cli_show_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "good.yaml").write_text(GOOD.format(name="good"))
    assert main(["scenarios", "--dir", str(tmp_path), "show", "good"]) == 0
    out = capsys.readouterr().out
    assert "g/good: a write reads back" in out
    assert "line 7: write {'offset': 0, 'length': 65536}" in out
    assert main(["scenarios", "--dir", str(tmp_path), "list", "--json"]) == 0
    assert '"id": "g/good"' in capsys.readouterr().out
    assert main(["scenarios", "--dir", str(tmp_path), "show", "nosuch"]) == 2
    assert "no scenario named 'nosuch'" in capsys.readouterr().err
