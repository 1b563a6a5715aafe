"""monitor.config.schema: every bad file is a ConfigError naming file, key path and problem; secrets stay hidden."""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import monitor.config.document
from monitor.config.document import _UniqueKeyLoader, load_yaml
from monitor.config.reader import ConfigReader
from monitor.config.schema import (
    Config,
    ConfigError,
    DnsConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_snmp_listen,
    split_host_port,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agent.yaml"
PASSWORD = "Zebra-Hunter2-Quokka"  # distinctive: any appearance in output is a leak


def write(directory: Path, text: str, name: str = "agent.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def assert_names(message: str, path: Path, key: str, *problem: str) -> None:
    """Every line names the file; some line names the key path and every problem word."""
    lines = message.splitlines()
    assert lines, "empty ConfigError"
    assert all(line.startswith(f"{path}: ") for line in lines), message
    matching = [line for line in lines if f": {key}: " in line]
    assert matching, f"no line names {key!r}: {message}"
    for word in problem:
        assert any(word in line for line in matching), f"{word!r} missing from {message}"


class TestUnreadableFile:
    def test_missing_file_names_the_path_and_says_it_cannot_be_read(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.yaml"
        message = config_error(path)
        assert message.startswith(f"{path}: cannot read")
        assert "No such file" in message

    def test_directory_instead_of_file_cannot_be_read(self, tmp_path: Path) -> None:
        # chmod 000 is no test when running as root (root reads it anyway); a directory never reads.
        message = config_error(tmp_path)
        assert message.startswith(f"{tmp_path}: cannot read")

    def test_non_utf8_bytes_are_refused_as_not_text(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.yaml"
        path.write_bytes(b"defaults: {helo: caf\xe9}\n")
        assert config_error(path).startswith(f"{path}: not UTF-8 text")


class TestInvalidYaml:
    def test_syntax_error_names_the_line(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - name: a\n   host: b\n")
        message = config_error(path)
        assert message.startswith(f"{path}: invalid YAML: line 3, column 4: ")
        assert len(message.splitlines()) == 1

    def test_duplicate_key_is_refused_with_its_line(self, tmp_path: Path) -> None:
        path = write(tmp_path, "defaults:\n  interval: 5s\n  interval: 6s\n")
        assert config_error(path) == f"{path}: invalid YAML: line 3, column 3: duplicate key 'interval'"

    def test_duplicate_key_in_a_list_item_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - {name: a, host: b.example, name: c}\n")
        assert "duplicate key 'name'" in config_error(path)

    def test_unhashable_key_is_a_config_error_not_a_crash(self, tmp_path: Path) -> None:
        path = write(tmp_path, "? [a, b]\n: 1\n")
        assert config_error(path) == f"{path}: invalid YAML: line 1, column 3: found unhashable key"

    def test_control_character_is_one_line_with_line_and_column(self, tmp_path: Path) -> None:
        path = tmp_path / "nul.yaml"
        path.write_text("defaults:\n  helo: a\x00b\n", encoding="utf-8")
        message = config_error(path)
        # the wording after the position is libyaml's or PyYAML's, whichever parses
        assert message.startswith(f"{path}: invalid YAML: line 2, column 10: unacceptable character #x0000: ")
        assert "\n" not in message

    @pytest.mark.parametrize(
        ("value", "kind"),
        [("!!int x", "int"), ("!!float x", "float"), ("!!timestamp x", "timestamp"), ("!!bool maybe", "bool")],
    )
    def test_a_value_its_explicit_tag_cannot_build_is_a_config_error_at_its_line(
        self, tmp_path: Path, value: str, kind: str
    ) -> None:
        path = write(tmp_path, f"defaults:\n  helo: a.example\n  interval: {value}\n")
        word = value.split()[1]
        assert config_error(path) == f"{path}: invalid YAML: line 3, column 13: {word!r} is not a valid {kind}"

    def test_top_level_list_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "- a\n- b\n")
        assert config_error(path) == f"{path}: (top level): expected a mapping, got list"

    def test_empty_file_is_all_defaults(self, tmp_path: Path) -> None:
        config = load_config(write(tmp_path, ""))
        assert config == Config()


class TestUnknownAndMistypedKeys:
    def test_unknown_nested_key_names_its_full_path(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - {name: a, host: mail.example, bogus: 1}\n")
        assert config_error(path) == f"{path}: smtp[0].bogus: unknown key"

    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        path = write(tmp_path, "prometheus: {listen: '127.0.0.1:9465'}\nsmpt: []\n")
        assert config_error(path) == f"{path}: smpt: unknown key"

    def test_wrong_scalar_type_names_key_and_expected_type(self, tmp_path: Path) -> None:
        path = write(tmp_path, "defaults: {alert_after: many}\n")
        assert_names(config_error(path), path, "defaults.alert_after", "valid integer")

    def test_mapping_where_a_list_belongs(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp: {name: a, host: mail.example}\n")
        assert config_error(path) == f"{path}: smtp: Input should be a valid list"

    def test_bad_tls_mode_lists_the_choices(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - {name: a, host: mail.example, tls: ssl}\n")
        assert_names(config_error(path), path, "smtp[0].tls", "'none', 'starttls' or 'implicit'")

    def test_bad_host_name(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - {name: a, host: 'bad host'}\n")
        assert config_error(path) == f"{path}: smtp[0].host: bad host name 'bad host'"

    def test_one_line_per_problem_when_several_keys_are_wrong(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            defaults: {interval: 5q, alert_after: 0}
            smtp:
              - {name: a, host: mail.example, port: 0}
            """,
        )
        lines = config_error(path).splitlines()
        assert [line.split(": ")[1] for line in lines] == [
            "defaults.interval",
            "defaults.alert_after",
            "smtp[0].port",
        ]

    def test_union_field_error_is_one_line_without_pydantic_internals(self, tmp_path: Path) -> None:
        path = write(tmp_path, "snmp:\n  communities:\n    - {name: public, allow: [not-a-network]}\n")
        message = config_error(path)
        assert message == (
            f"{path}: snmp.communities[0].allow[0]: "
            "Input is not a valid IPv4 network; Input is not a valid IPv6 network"
        )


class TestAddresses:
    @pytest.mark.parametrize(
        ("listen", "problem"),
        [
            ("127.0.0.1", "needs a port"),
            ("127.0.0.1:99999", "bad port"),
            ("127.0.0.1:http", "bad port"),
            ("[::1:9465", "missing ']'"),
            (":9465", "no host"),
        ],
    )
    def test_bad_prometheus_listen(self, tmp_path: Path, listen: str, problem: str) -> None:
        path = write(tmp_path, f"prometheus: {{listen: '{listen}'}}\n")
        assert_names(config_error(path), path, "prometheus.listen", problem)

    @pytest.mark.parametrize(
        ("listen", "problem"),
        [
            ("udp:mail.example:161", "must be an IP address"),
            ("udp:127.0.0.1:0", "bad port"),
            ("udp6:[::1", "missing ']'"),
        ],
    )
    def test_bad_snmp_listen(self, tmp_path: Path, listen: str, problem: str) -> None:
        path = write(tmp_path, f"snmp: {{listen: ['{listen}']}}\n")
        assert_names(config_error(path), path, "snmp.listen", problem)

    @pytest.mark.parametrize(
        ("nameserver", "problem"),
        [("ns1.example", "must be an IP address"), ("192.0.2.1:65536", "bad port"), ("[::1]x", "bad address")],
    )
    def test_bad_nameserver(self, tmp_path: Path, nameserver: str, problem: str) -> None:
        path = write(tmp_path, f"dns: {{nameservers: ['{nameserver}']}}\n")
        assert_names(config_error(path), path, "dns.nameservers", problem)

    def test_smtp_port_out_of_range(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - {name: a, host: mail.example, port: 70000}\n")
        assert_names(config_error(path), path, "smtp[0].port", "less than or equal to 65535")

    def test_ipv6_nameserver_with_port_and_bare(self, tmp_path: Path) -> None:
        config = load_config(write(tmp_path, "dns: {nameservers: ['[::1]:53', '::1', '192.0.2.1:5353']}\n"))
        assert config.dns.nameserver_addresses() == [("::1", 53), ("::1", 53), ("192.0.2.1", 5353)]

    def test_snmp_listen_forms(self) -> None:
        assert parse_snmp_listen("udp:0.0.0.0:161") == ("udp", "0.0.0.0", 161)
        assert parse_snmp_listen("udp6:[::]:1161") == ("udp6", "::", 1161)
        assert parse_snmp_listen("127.0.0.1") == ("udp", "127.0.0.1", 161)
        assert parse_snmp_listen("[::1]:161") == ("udp6", "::1", 161)  # IPv6 implies udp6

    def test_split_host_port_forms(self) -> None:
        assert split_host_port("mail.example", 25) == ("mail.example", 25)
        assert split_host_port("mail.example:587", 25) == ("mail.example", 587)
        assert split_host_port("[2001:db8::1]:25", None) == ("2001:db8::1", 25)
        assert split_host_port("2001:db8::1", 25) == ("2001:db8::1", 25)

    def test_prometheus_listen_address(self, tmp_path: Path) -> None:
        config = load_config(write(tmp_path, "prometheus: {listen: '[::1]:9465'}\n"))
        assert config.prometheus.address() == ("::1", 9465)

    def test_prometheus_can_be_disabled(self, tmp_path: Path) -> None:
        assert load_config(write(tmp_path, "prometheus: {listen: null}\n")).prometheus.address() is None


class TestProbeNames:
    def test_duplicate_name_across_smtp_and_mx(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            smtp:
              - {name: primary, host: mail.example}
            mx:
              - {name: primary, domain: example.com}
            """,
        )
        assert config_error(path) == f"{path}: mx[0].name: duplicate probe name 'primary' (also smtp[0])"

    def test_duplicate_name_within_smtp(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            smtp:
              - {name: a, host: mail.example}
              - {name: a, host: mx.example}
            """,
        )
        assert_names(config_error(path), path, "smtp[1].name", "duplicate probe name 'a'", "smtp[0]")

    def test_name_with_spaces_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "smtp:\n  - {name: 'a b', host: mail.example}\n")
        assert_names(config_error(path), path, "smtp[0].name", "pattern")


class TestSharedValues:
    def test_probes_naming_one_ca_file_hold_one_path(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            smtp:
              - {name: a, host: mail.example, ca_file: /etc/ssl/ca.pem}
              - {name: b, host: mail.example, ca_file: /etc/ssl/ca.pem}
            mx:
              - {name: c, domain: example.com, ca_file: /etc/ssl/ca.pem, mta_sts_ca_file: /etc/ssl/ca.pem}
            """,
        )
        config = load_config(path)
        paths = [config.smtp[0].ca_file, config.smtp[1].ca_file, config.mx[0].ca_file, config.mx[0].mta_sts_ca_file]
        assert paths[0] == Path("/etc/ssl/ca.pem")
        assert all(p is paths[0] for p in paths)


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("30s", 30.0),
            ("5m", 300.0),
            ("1h", 3600.0),
            ("250ms", 0.25),
            ("1d", 86400.0),
            (45, 45.0),
            (2.5, 2.5),
            ("10", 10.0),
            (" 1.5 s ", 1.5),
        ],
    )
    def test_good_durations(self, text: str | float, seconds: float) -> None:
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("5q", "bad duration '5q'"),
            (-1, "greater than zero"),
            (0, "greater than zero"),
            ("-1s", "bad duration"),
            ("0ms", "greater than zero"),
            (True, "a duration is"),
        ],
    )
    def test_bad_duration_in_a_file(self, tmp_path: Path, text: str | int, problem: str) -> None:
        value = repr(text) if isinstance(text, str) else str(text).lower()
        path = write(tmp_path, f"smtp:\n  - {{name: a, host: mail.example, timeout: {value}}}\n")
        assert_names(config_error(path), path, "smtp[0].timeout", problem)

    def test_durations_in_a_file_become_seconds(self, tmp_path: Path) -> None:
        config = load_config(
            write(
                tmp_path,
                """\
            defaults: {interval: 5m, timeout: 250ms}
            dns: {timeout: 2}
            smtp:
              - {name: a, host: mail.example, interval: 1h}
            """,
            )
        )
        assert (config.defaults.interval, config.defaults.timeout) == (300.0, 0.25)
        assert config.dns.timeout == 2.0
        assert config.smtp[0].interval == 3600.0


class TestSnmpCredentials:
    def test_short_inline_v3_password(self, tmp_path: Path) -> None:
        path = write(tmp_path, "snmp:\n  users:\n    - {name: ops, auth: {password: tiny7ch}}\n")
        message = config_error(path)
        assert_names(message, path, "snmp.users[0].auth.password", "at least 8 characters")
        assert "tiny7ch" not in message

    def test_short_v3_password_from_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SMTPMON_TEST_SHORT", "tiny7ch")
        path = write(
            tmp_path,
            """\
            snmp:
              users:
                - {name: ops, auth: {password: {env: SMTPMON_TEST_SHORT}}}
            """,
        )
        message = config_error(path)
        assert_names(message, path, "snmp.users[0].auth.password", "at least 8 characters")
        assert "tiny7ch" not in message

    def test_v3_notify_without_user(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            snmp:
              notify:
                - {host: 127.0.0.1, version: 3, auth: {password: longenough}}
            """,
        )
        assert config_error(path) == f"{path}: snmp.notify[0]: an SNMPv3 receiver needs user and auth"

    def test_v2c_notify_without_community(self, tmp_path: Path) -> None:
        path = write(tmp_path, "snmp:\n  notify:\n    - {host: 127.0.0.1}\n")
        assert_names(config_error(path), path, "snmp.notify[0]", "needs community")

    def test_v1_inform_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, "snmp:\n  notify:\n    - {host: 127.0.0.1, version: 1, type: inform, community: c}\n")
        assert_names(config_error(path), path, "snmp.notify[0]", "SNMPv1 has no informs")

    def test_secret_from_unset_env_var(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SMTPMON_TEST_UNSET", raising=False)
        path = write(tmp_path, "snmp:\n  communities:\n    - name: {env: SMTPMON_TEST_UNSET}\n")
        assert config_error(path) == (
            f"{path}: snmp.communities[0].name: environment variable SMTPMON_TEST_UNSET is not set"
        )

    def test_secret_from_missing_file(self, tmp_path: Path) -> None:
        secret = tmp_path / "absent.secret"
        path = write(tmp_path, f"snmp:\n  communities:\n    - name: {{file: '{secret}'}}\n")
        assert config_error(path) == (
            f"{path}: snmp.communities[0].name: cannot read secret file {secret}: No such file or directory"
        )

    def test_secret_with_two_sources(self, tmp_path: Path) -> None:
        path = write(tmp_path, "snmp:\n  communities:\n    - name: {value: abc, env: HOME}\n")
        assert_names(config_error(path), path, "snmp.communities[0].name", "exactly one of value, file, env")

    def test_secrets_from_file_env_and_inline(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        secret_file = tmp_path / "community.secret"
        secret_file.write_text("from-a-file\n", encoding="utf-8")
        monkeypatch.setenv("SMTPMON_TEST_AUTH", "from-the-environment")
        config = load_config(
            write(
                tmp_path,
                f"""\
            snmp:
              communities:
                - name: {{file: '{secret_file}'}}
                - name: inline-community
              users:
                - name: ops
                  auth: {{protocol: sha512, password: {{env: SMTPMON_TEST_AUTH}}}}
                  priv: {{protocol: aes256, password: inline-privacy}}
            """,
            )
        )
        communities = config.snmp.communities
        assert communities[0].name.reveal() == "from-a-file"  # trailing newline stripped
        assert communities[1].name.reveal() == "inline-community"
        user = config.snmp.users[0]
        assert user.auth.password.reveal() == "from-the-environment"
        assert user.priv is not None
        assert user.priv.password.reveal() == "inline-privacy"


class TestSecretsStayHidden:
    def secret_config(self, tmp_path: Path, extra: str = "") -> Path:
        return write(
            tmp_path,
            f"""\
            snmp:
              communities:
                - name: {PASSWORD}
              users:
                - name: ops
                  auth: {{password: {PASSWORD}}}
                  priv: {{password: {PASSWORD}}}
              notify:
                - {{host: 127.0.0.1, version: 3, user: ops, auth: {{password: {PASSWORD}}}}}
                - {{host: 127.0.0.1, community: {PASSWORD}}}
            {extra}""",
        )

    def test_repr_and_str_of_config_hide_inline_secrets(self, tmp_path: Path) -> None:
        config = load_config(self.secret_config(tmp_path))
        assert config.snmp.users[0].auth.password.reveal() == PASSWORD
        for text in (repr(config), str(config), repr(config.snmp), str(config.snmp.communities[0])):
            assert PASSWORD not in text
        assert "**********" in repr(config)

    def test_error_about_another_key_does_not_show_secrets(self, tmp_path: Path) -> None:
        path = self.secret_config(tmp_path, "defaults: {interval: 5q}\n")
        message = config_error(path)
        assert_names(message, path, "defaults.interval", "bad duration")
        assert PASSWORD not in message

    def test_error_about_the_secret_entry_itself_does_not_show_it(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            f"""\
            snmp:
              users:
                - name: ops
                  auth: {{protocol: rot13, password: {PASSWORD}}}
            """,
        )
        message = config_error(path)
        assert_names(message, path, "snmp.users[0].auth.protocol", "Input should be")
        assert PASSWORD not in message

    def test_yaml_error_on_the_secret_line_does_not_show_it(self, tmp_path: Path) -> None:
        path = write(tmp_path, f"snmp:\n  communities:\n    - name: {PASSWORD}\n     bad: indent\n")
        message = config_error(path)
        assert "invalid YAML: line 4" in message
        assert PASSWORD not in message


class TestExample:
    def test_shipped_example_validates(self) -> None:
        config = load_config(EXAMPLE)
        assert [p.name for p in config.smtp] == ["localhost-25", "localhost-submission"]
        assert [(m.name, m.domain) for m in config.mx] == [("debian-org-mx", "debian.org")]
        assert config.defaults.interval == 30.0
        assert config.prometheus.address() == ("127.0.0.1", 9465)
        assert config.snmp.listen_addresses() == [("udp", "127.0.0.1", 1161)]
        assert config.duplicate_names() == []

    def test_delivery_example_and_the_readmes_delivery_block_validate(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        # The secrets they name, read at load time, made to exist here.
        monkeypatch.setenv("PROBE_MAILBOX_PASSWORD", PASSWORD)
        (tmp_path / "probe-submit.pass").write_text(PASSWORD)

        def parsed(text: str) -> Config:
            return parse_config(load_yaml(text.replace("/etc/smtp-monitor", str(tmp_path))))

        example = parsed((ROOT / "examples" / "delivery.yaml").read_text())
        assert [(p.name, p.submit.via, p.mailbox.protocol) for p in example.delivery] == [
            ("example-roundtrip", "submission", "imap"),
            ("example-via-mx", "mx", "pop3"),
        ]
        assert example.delivery[1].lost_after == 3600.0  # the default
        readme = (ROOT / "README.md").read_text()
        block = readme.split("# in the agent's config (examples/delivery.yaml", 1)[1].split("```", 1)[0]
        from_readme = parsed("\n".join(block.splitlines()[1:]))
        assert from_readme.delivery == example.delivery[:1]

    def test_defaults_when_sections_are_absent(self) -> None:
        config = Config()
        assert config.defaults.interval == 60.0
        assert config.defaults.alert_after == 2
        assert config.dns == DnsConfig()
        assert config.prometheus.address() == ("127.0.0.1", 9465)


# -- the YAML loader: load_yaml against PyYAML's own constructors -------------------------------

# Plain scalars of every implicit YAML 1.1 type (SafeLoader's resolvers), their quoted twins, and
# texts that only look like one; all are valid inside flow collections.
PLAIN_SCALARS = [
    "a",
    "name",
    "smtp-1",
    "127.0.0.1",
    "mail.example.com",
    "a b",
    "yes",
    "No",
    "ON",
    "off",
    "y",
    "n",
    "true",
    "False",
    "~",
    "null",
    "Null",
    "NULL",
    "0",
    "-1",
    "+12",
    "012",
    "0o12",
    "0x1F",
    "0b101",
    "1_000",
    "190:20:30",
    "-1:30",
    "1.5",
    "-1.5e+3",
    "1e3",
    "6.8523015e+5",
    ".5",
    "1.",
    "1_0.5",
    "190:20:30.15",
    ".inf",
    "-.Inf",
    "+.INF",
    ".nan",
    ".NaN",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "2001-12-14 21:59:43.10 -5",
    "2002-12-14",
    "<<",
    "=",
    "'yes'",
    '"012"',
    "'~'",
    "''",
    '""',
    '"a\\tb"',
    "'<<'",
]
# Mostly none: most generated documents are then valid, and still a tenth of their nodes is tagged.
SCALAR_TAGS = ["" for _ in range(60)] + ["!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!x", "!"]
COLLECTION_PROPS = ["" for _ in range(40)] + ["&"] * 20 + ["!!map", "!!seq", "!!set", "!!omap", "!!pairs", "!x"]
KEYS = ["a", "a", "b", "name", "1", "1.0", "true", "yes", "null", "~", ".nan", "<<", "<<", "=", "'a'", "0x1", "*"]

Node = tuple[Any, ...]

leaves = st.one_of(
    st.tuples(st.just("scalar"), st.sampled_from(PLAIN_SCALARS), st.sampled_from(SCALAR_TAGS)),
    st.tuples(st.just("alias"), st.integers(0, 20)),
)
documents = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.tuples(
            st.just("map"),
            st.lists(st.tuples(st.sampled_from(KEYS), children), max_size=5),
            st.sampled_from(COLLECTION_PROPS),
        ),
        st.tuples(st.just("seq"), st.lists(children, max_size=5), st.sampled_from(COLLECTION_PROPS)),
    ),
    max_leaves=25,
)


class _Renderer:
    """YAML text for a generated node: block style where it can be, flow style inside; anchors are
    numbered in document order and aliases name one already defined (or one being defined: recursion)."""

    def __init__(self, alias_keys: st.DataObject | None = None) -> None:
        self.anchors = 0

    def alias(self, pick: int) -> str:
        return f"*a{pick % self.anchors}" if self.anchors else "x"

    def props(self, props: str) -> str:
        if props.startswith("&"):
            self.anchors += 1
            props = f"&a{self.anchors - 1}{props[1:]}"
        return props + " " if props else ""

    def key(self, key: str) -> str:
        return self.alias(len(key) + self.anchors) if key == "*" else key

    def flow(self, node: Node) -> str:
        if node[0] == "scalar":
            return f"{node[2]} {node[1]}" if node[2] else node[1]
        if node[0] == "alias":
            return self.alias(node[1])
        props = self.props(node[2])
        if node[0] == "map":
            return props + "{" + ", ".join(f"{self.key(k)}: {self.flow(v)}" for k, v in node[1]) + "}"
        return props + "[" + ", ".join(self.flow(item) for item in node[1]) + "]"

    def block(self, node: Node, indent: int = 0) -> list[str]:
        pad = " " * indent
        if node[0] not in ("map", "seq") or not node[1] or node[2]:
            return [pad + self.flow(node)]
        lines = []
        if node[0] == "map":
            for key, value in node[1]:
                key = self.key(key)
                if value[0] in ("map", "seq") and value[1] and not value[2]:
                    lines += [f"{pad}{key}:", *self.block(value, indent + 2)]
                else:
                    lines.append(f"{pad}{key}: {self.flow(value)}")
        else:
            for item in node[1]:
                inner = self.block(item, indent + 2)
                lines += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
        return lines


def render(node: Node) -> str:
    return "\n".join(_Renderer().block(node)) + "\n"


def canonical(value: Any, ids: dict[int, int] | None = None) -> Any:
    """Types, values, and which collections are one object: what == misses (1 == 1.0 == True, nan)."""
    ids = {} if ids is None else ids
    if isinstance(value, dict | list | set):
        if id(value) in ids:
            return ("same as", ids[id(value)])
        ids[id(value)] = len(ids)
        if isinstance(value, dict):
            return ("dict", [(canonical(k, ids), canonical(v, ids)) for k, v in value.items()])
        if isinstance(value, set):
            return ("set", sorted(repr(canonical(item, ids)) for item in value))
        return ("list", [canonical(item, ids) for item in value])
    if isinstance(value, tuple):
        return ("tuple", [canonical(item, ids) for item in value])
    return (type(value).__name__, repr(value))


def outcome(load: Callable[[str], Any], text: str) -> tuple[str, Any]:
    try:
        return "value", canonical(load(text))
    except yaml.MarkedYAMLError as exc:
        if exc.problem and re.search(r"' is not a valid \w+$", exc.problem):
            return "error", "a value its tag cannot build"  # load_yaml's word for PyYAML's bare exception
        mark = exc.problem_mark
        return "error", (type(exc).__name__, exc.problem, mark and (mark.line, mark.column))
    except Exception:  # a bad `!!int x` or `!!timestamp x` escapes PyYAML as ValueError, KeyError, ...
        return "error", "a value its tag cannot build"


def pyyaml_constructed(text: str) -> Any:
    """The document as the loader's PyYAML constructor builds it, through yaml.load rather than load_yaml."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def safe_loaded(text: str) -> Any:
    return yaml.load(text, Loader=yaml.SafeLoader)


def refused_unlike_safe_loader(result: tuple[str, Any]) -> bool:
    """Duplicate keys are refused on purpose, where SafeLoader keeps the last."""
    return result[0] == "error" and str(result[1][1]).startswith("duplicate key")


TRICKY_DOCUMENTS = [
    "",
    "# only a comment\n",
    "plain\n",
    "- " + "\n- ".join(PLAIN_SCALARS) + "\n",
    "{" + ", ".join(f"k{i}: {text}" for i, text in enumerate(PLAIN_SCALARS)) + "}\n",
    "smtp:\n- name: a\n  host: 127.0.0.1\n  port: 2525\n  verify: no\n- name: b\n  host: ::1\n  tls: off\n",
    "a: &x [1, 2]\nb: *x\nc: &y {k: v}\nd: [*y, *y]\n",
    "a: &s shared\nb: *s\n*s : key from an alias\n",
    "&r [*r, 1]\n",
    "&m {self: *m}\n",
    "base: &b {host: h, port: 25}\nprobe: {<<: *b, port: 587}\n",
    "b1: &b1 {a: 1}\nb2: &b2 {a: 2, c: 3}\nx: {<<: [*b1, *b2], d: 4}\n",
    "x: {<<: 1}\n",
    "x: {<<: *undefined}\n",
    "a: !!str 123\nb: !!int '0x1F'\nc: !!float '1'\nd: !!bool 'yes'\ne: !!null ''\nf: !!binary aGVsbG8=\n",
    "a: !!timestamp 2001-12-14\nb: !!set {x, y}\nc: !!omap [{k: 1}, {j: 2}]\nd: !!pairs [{k: 1}, {k: 2}]\n",
    "a: ! 12\nb: !!map {x: 1}\nc: !!seq [1]\n",
    "a: !custom 1\n",
    "a: !!python/object:os.system x\n",
    "a: !!int x\n",
    "a: !!bool maybe\n",
    "a: !!float abc\n",
    "= : 1\n",
    "a: 1\nb: 2\na: 3\n",
    "{1: a, 1.0: b}\n",
    "{true: a, 1: b}\n",
    "{null: a, ~: b}\n",
    "{.nan: a, .nan: b}\n",
    "- {a: 1, a: 2}\n- {b: [{c: 1, c: 2}]}\n",
    "smtp:\n- {name: a, name: b}\nsnmp: {x: 1, x: 2}\n",
    "? [a, b]\n: 1\n",
    "? {a: 1}\n: 1\n",
    "a: |\n  literal\n  text\nb: >\n  folded\n  text\nc: 'single ''quoted'''\nd: \"double \\u00e9\"\n",
    "--- a\n--- b\n",
    "a: [1, 2\n",
]


def _comparable_with_safe_loader(text: str) -> bool:
    """Not a repeated key (SafeLoader keeps the last) nor a syntax error (libyaml words those its own way)."""
    expected = outcome(pyyaml_constructed, text)
    syntax = expected[0] == "error" and expected[1][0] in ("ScannerError", "ParserError", "ComposerError")
    return not refused_unlike_safe_loader(expected) and not syntax


SAFE_LOADER_COMPARABLE = [text for text in TRICKY_DOCUMENTS if _comparable_with_safe_loader(text)]


class TestYamlLoader:
    @pytest.mark.parametrize("text", TRICKY_DOCUMENTS)
    def test_tricky_document_loads_as_pyyaml_constructs_it(self, text: str) -> None:
        assert outcome(load_yaml, text) == outcome(pyyaml_constructed, text)

    @pytest.mark.parametrize("text", SAFE_LOADER_COMPARABLE)
    def test_tricky_document_without_repeated_keys_or_syntax_errors_loads_as_safe_loader(self, text: str) -> None:
        assert outcome(load_yaml, text) == outcome(safe_loaded, text)

    @settings(max_examples=500, deadline=None)
    @given(documents)
    def test_generated_document_loads_as_safe_loader_unless_a_key_repeats(self, node: Node) -> None:
        text = render(node)
        assume(not refused_unlike_safe_loader(outcome(pyyaml_constructed, text)))
        assert outcome(load_yaml, text) == outcome(safe_loaded, text), text

    def test_aliased_collections_are_one_object(self) -> None:
        data = load_yaml("a: &x [1]\nb: *x\n")
        assert data["a"] is data["b"]

    def test_recursive_document_refers_to_itself(self) -> None:
        data = load_yaml("&r [*r, 1]\n")
        assert data[0] is data

    def test_merge_key_merges_and_own_keys_win(self) -> None:
        data = load_yaml("base: &b {host: h, port: 25}\nprobe: {<<: *b, port: 587}\n")
        assert data["probe"] == {"host": "h", "port": 587}

    def test_duplicate_key_is_refused_at_its_second_occurrence(self) -> None:
        with pytest.raises(yaml.constructor.ConstructorError) as info:
            load_yaml("a: 1\nb:\n  c: 2\n  c: 3\n")
        assert info.value.problem == "duplicate key 'c'"
        assert info.value.problem_mark is not None
        assert (info.value.problem_mark.line, info.value.problem_mark.column) == (3, 2)


def _raise_a_bug() -> None:
    raise RuntimeError("a bug in the child")


def _die() -> None:
    os._exit(1)


class TestConfigReader:
    """load_config's result or error, whether the forked child read the file or could not."""

    def test_good_file_gives_what_load_config_gives(self, tmp_path: Path) -> None:
        path = write(tmp_path, "defaults: {interval: 5s}\nsmtp:\n  - {name: a, host: mail.example, verify: no}\n")
        assert ConfigReader(path).config() == load_config(path)

    @pytest.mark.parametrize(
        "text",
        [
            "defaults:\n  interval: 5s\n  interval: 6s\n",  # YAML: read in the child
            "smtp:\n  - {name: a, host: mail.example, port: 0}\n",  # validation: done here
        ],
    )
    def test_bad_file_gives_load_configs_error(self, tmp_path: Path, text: str) -> None:
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            ConfigReader(path).config()
        assert str(info.value) == config_error(path)

    def test_missing_file_gives_load_configs_error(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.yaml"
        with pytest.raises(ConfigError) as info:
            ConfigReader(path).config()
        assert str(info.value) == config_error(path)

    def test_a_value_its_tag_cannot_build_is_the_childs_config_error(self, tmp_path: Path) -> None:
        path = write(tmp_path, "defaults: {alert_after: !!int x}\n")  # PyYAML raises a bare ValueError
        with pytest.raises(ConfigError, match=r"line 1, column 25: 'x' is not a valid int"):
            ConfigReader(path).config()

    @pytest.mark.parametrize(
        "fail",
        [_raise_a_bug, _die],
        ids=["raises", "dies"],
    )
    def test_a_child_that_fails_otherwise_leaves_the_reading_to_this_process(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: Callable[[], None]
    ) -> None:
        path = write(tmp_path, "defaults: {interval: 5s}\n")
        parent = os.getpid()
        real = monitor.config.document.read_document

        def fails_in_the_child(source: Path | str) -> Any:
            if os.getpid() != parent:
                fail()
            return real(source)

        monkeypatch.setattr(monitor.config.document, "read_document", fails_in_the_child)
        assert ConfigReader(path).config().defaults.interval == 5.0
