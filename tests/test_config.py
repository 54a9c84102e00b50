"""broker.config: defaults, precedence, and errors that name file, line and key."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.config import (
    ConfigSource,
    Section,
    Settings,
    default_config_path,
    default_socket_path,
    load_settings,
    socket_path_from_env,
)
from broker.core.errors import ConfigError
from broker.core.locations import MEMO


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose HOME and runtime dir live in tmp_path."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}


def write_config(env: dict[str, str], text: str) -> Path:
    """A config file outside HOME, named by BROKER_CONFIG, so errors show its full path."""
    path = Path(env["HOME"]).parent / "conf.toml"
    path.write_text(text)
    env["BROKER_CONFIG"] = str(path)
    return path


def load(env: dict[str, str], text: str) -> Settings:
    write_config(env, text)
    return load_settings(env)


def config_error(env: dict[str, str], text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(env, text)
    return info.value


# --- defaults and precedence ----------------------------------------------------------------


def test_defaults_apply_when_no_config_file_exists(env: dict[str, str]) -> None:
    s = load_settings(env)
    home = Path(env["HOME"])
    assert s.config_path is None
    assert s.socket_path == Path(env["XDG_RUNTIME_DIR"], "broker", "broker.sock")
    assert s.state_dir == home / ".local/state/broker"
    assert (s.store_backend, s.log_level, s.refresh_margin, s.http_timeout) == ("auto", "info", 60.0, 30.0)
    assert s.providers == {}
    assert s.root.data == {}


def test_default_config_file_is_read_from_xdg_config_home(env: dict[str, str]) -> None:
    assert default_config_path(env) == Path(env["HOME"], ".config/broker/config.toml")
    env["XDG_CONFIG_HOME"] = str(Path(env["HOME"]).parent / "cfg")
    path = default_config_path(env)
    path.parent.mkdir(parents=True)
    path.write_text('[daemon]\nlog_level = "debug"\n')
    s = load_settings(env)
    assert (s.config_path, s.log_level) == (path, "debug")


def test_relative_xdg_dirs_are_ignored(env: dict[str, str]) -> None:
    env.update(XDG_CONFIG_HOME="rel", XDG_STATE_HOME="rel", XDG_RUNTIME_DIR="rel")
    assert default_config_path(env) == Path(env["HOME"], ".config/broker/config.toml")
    assert load_settings(env).state_dir == Path(env["HOME"], ".local/state/broker")


def test_socket_falls_back_to_a_per_uid_tmp_dir_without_runtime_dir(env: dict[str, str]) -> None:
    del env["XDG_RUNTIME_DIR"]
    assert default_socket_path(env) == Path(f"/tmp/broker-{os.getuid()}/broker.sock")


def test_state_dir_follows_xdg_state_home(env: dict[str, str], tmp_path: Path) -> None:
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    assert load_settings(env).state_dir == tmp_path / "state" / "broker"


FILE = """
[daemon]
socket = "/file/broker.sock"
log_level = "warning"
[store]
backend = "file"
state_dir = "/file/state"
[refresh]
margin = 120
[http]
timeout = 12.5
"""


def test_file_beats_defaults(env: dict[str, str]) -> None:
    s = load(env, FILE)
    assert s.socket_path == Path("/file/broker.sock")
    assert s.state_dir == Path("/file/state")
    assert (s.store_backend, s.log_level, s.refresh_margin, s.http_timeout) == ("file", "warning", 120.0, 12.5)


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("BROKER_SOCKET", "/env/broker.sock", "socket_path", Path("/env/broker.sock")),
        ("BROKER_STATE_DIR", "/env/state", "state_dir", Path("/env/state")),
        ("BROKER_STORE", "keyring", "store_backend", "keyring"),
    ],
)
def test_environment_beats_file(
    env: dict[str, str], variable: str, value: str, attribute: str, expected: object
) -> None:
    env[variable] = value
    assert getattr(load(env, FILE), attribute) == expected


def test_empty_environment_variable_counts_as_unset(env: dict[str, str]) -> None:
    env["BROKER_STORE"] = ""
    assert load(env, FILE).store_backend == "file"


def test_missing_file_named_by_broker_config_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    env["BROKER_CONFIG"] = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=r"^BROKER_CONFIG: no such file: .*absent\.toml$"):
        load_settings(env)


def test_bogus_store_from_environment_names_the_variable(env: dict[str, str]) -> None:
    env["BROKER_STORE"] = "bogus"
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value) == 'BROKER_STORE: must be one of "auto", "keyring", "file" (got "bogus")'
    assert "BROKER_STORE" in info.value.hint


def test_relative_socket_from_environment_is_refused(env: dict[str, str]) -> None:
    env["BROKER_SOCKET"] = "broker.sock"
    with pytest.raises(ConfigError, match=r"^BROKER_SOCKET: must be an absolute path"):
        load_settings(env)


def test_unreadable_config_is_a_config_error(env: dict[str, str], tmp_path: Path) -> None:
    env["BROKER_CONFIG"] = str(tmp_path)  # a directory
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(env)


# --- errors name file, line and key ---------------------------------------------------------


PROVIDER = """\
[providers.acme]
name = 5
count = "x"
ratio = "x"
enabled = 1
flow = "devcie"
scopes = "a b"
more = ["a", 2]
headers = {X-A = 1}
url = "ftp://example.com"
sub = 3
big = 500
"""


def _acme(env: dict[str, str]) -> Section:
    return load(env, PROVIDER).providers["acme"]


GETTER_ERRORS: list[tuple[Callable[[Section], object], int, str, str]] = [
    (lambda s: s.text("name"), 2, "providers.acme.name", "must be a string (got an integer)"),
    (lambda s: s.text("absent"), 1, "providers.acme.absent", "is required"),
    (lambda s: s.optional_text("name"), 2, "providers.acme.name", "must be a string (got an integer)"),
    (lambda s: s.integer("count"), 3, "providers.acme.count", "must be an integer (got a string)"),
    (lambda s: s.integer("big", max=100), 12, "providers.acme.big", "must be at most 100 (got 500)"),
    (lambda s: s.integer("big", min=1, max=9), 12, "providers.acme.big", "must be between 1 and 9 (got 500)"),
    (lambda s: s.number("ratio"), 4, "providers.acme.ratio", "must be a number (got a string)"),
    (lambda s: s.number("big", min=1000), 12, "providers.acme.big", "must be at least 1000 (got 500.0)"),
    (lambda s: s.flag("enabled"), 5, "providers.acme.enabled", "must be true or false (got an integer)"),
    (
        lambda s: s.choice("flow", ["device", "pkce"]),
        6,
        "providers.acme.flow",
        'must be one of "device", "pkce" (got "devcie")',
    ),
    (lambda s: s.text_list("scopes"), 7, "providers.acme.scopes", "must be an array of strings"),
    (lambda s: s.text_list("more"), 8, "providers.acme.more", "item 1 must be a string (got an integer)"),
    (lambda s: s.text_table("headers"), 9, "providers.acme.headers.X-A", "must be a string (got an integer)"),
    (lambda s: s.url("url"), 10, "providers.acme.url", "must be an absolute http:// or https:// URL"),
    (lambda s: s.section("sub"), 11, "providers.acme.sub", "must be a table (got an integer)"),
    (lambda s: s.check_keys(["name"]), 3, "providers.acme.count", "unknown key"),
]


@pytest.mark.parametrize(("call", "line", "key", "message"), GETTER_ERRORS)
def test_every_getter_error_names_path_line_and_dotted_key(
    env: dict[str, str], call: Callable[[Section], object], line: int, key: str, message: str
) -> None:
    section = _acme(env)
    with pytest.raises(ConfigError) as info:
        call(section)
    assert str(info.value).startswith(f"{env['BROKER_CONFIG']}:{line}: {key}: {message}")
    assert "BROKER_CONFIG" in info.value.hint


def test_bool_is_not_an_integer(env: dict[str, str]) -> None:
    s = load(env, "[providers.acme]\nn = true\n").providers["acme"]
    with pytest.raises(ConfigError, match="must be an integer \\(got a boolean\\)"):
        s.integer("n")
    with pytest.raises(ConfigError, match="must be a number \\(got a boolean\\)"):
        s.number("n")


def test_type_errors_do_not_echo_the_value(env: dict[str, str]) -> None:
    s = load(env, '[providers.acme]\nheaders = {Authorization = ["sk-secret"]}\n').providers["acme"]
    with pytest.raises(ConfigError) as info:
        s.text_table("headers")
    assert "sk-secret" not in str(info.value)


def test_url_error_hides_a_password(env: dict[str, str]) -> None:
    s = load(env, '[providers.acme]\nurl = "ftp://user:hunter2@example.com"\n').providers["acme"]
    with pytest.raises(ConfigError) as info:
        s.url("url")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["example.com/api", "https://", "http://:80/x", "https://h:99999/", "https://a b/"])
def test_url_without_scheme_or_host_is_refused(env: dict[str, str], url: str) -> None:
    s = load(env, f'[providers.acme]\nurl = "{url}"\n').providers["acme"]
    with pytest.raises(ConfigError, match=r":2: providers\.acme\.url: must be an absolute"):
        s.url("url")


def test_error_shows_home_as_tilde(env: dict[str, str]) -> None:
    path = default_config_path(env)
    path.parent.mkdir(parents=True)
    path.write_text('[daemon]\n\nlog_level = "loud"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value) == (
        "~/.config/broker/config.toml:3: daemon.log_level: "
        'must be one of "debug", "info", "warning", "error" (got "loud")'
    )
    assert info.value.hint == "fix the file, or point BROKER_CONFIG at another one"


def test_syntax_error_reports_the_line(env: dict[str, str]) -> None:
    error = config_error(env, '[daemon]\nlog_level = "info"\nsocket = \n')
    assert str(error) == f"{env['BROKER_CONFIG']}:3: Invalid value (column 10)"


def test_syntax_error_at_end_of_file_reports_the_last_line(env: dict[str, str]) -> None:
    error = config_error(env, "[daemon]\n\nlog_level = 'info")
    assert str(error).startswith(f"{env['BROKER_CONFIG']}:3: ")


def test_deep_nesting_is_a_config_error(env: dict[str, str]) -> None:
    error = config_error(env, "a = " + "[" * 5000 + "]" * 5000)
    assert "nested too deeply" in str(error)


def test_invalid_utf8_reports_the_line(env: dict[str, str]) -> None:
    path = write_config(env, "")
    path.write_bytes(b"[daemon]\nlog_level = '\xff'\n")
    with pytest.raises(ConfigError, match=r":2: not valid UTF-8"):
        load_settings(env)


def test_misspelt_key_gets_a_did_you_mean(env: dict[str, str]) -> None:
    error = config_error(env, "[daemon]\n\nlog_levle = 'info'\n")
    assert str(error) == (f'{env["BROKER_CONFIG"]}:3: daemon.log_levle: unknown key (did you mean "log_level"?)')
    assert "log_level, socket" in error.hint


def test_misspelt_table_gets_a_did_you_mean(env: dict[str, str]) -> None:
    error = config_error(env, "[daemon]\n[provider.acme]\nflow = 'pkce'\n")
    assert str(error) == f'{env["BROKER_CONFIG"]}:2: provider: unknown key (did you mean "providers"?)'


def test_unknown_key_far_from_any_name_gets_no_suggestion(env: dict[str, str]) -> None:
    assert str(config_error(env, "zzz = 1\n")).endswith(": zzz: unknown key")


def test_provider_that_is_not_a_table_is_refused(env: dict[str, str]) -> None:
    error = config_error(env, "[providers]\nacme = 'x'\n")
    assert str(error).startswith(f"{env['BROKER_CONFIG']}:2: providers.acme: must be a table")


def test_top_level_table_of_wrong_type_is_refused(env: dict[str, str]) -> None:
    assert ":1: store: must be a table (got a string)" in str(config_error(env, "store = 'file'\n"))


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_refresh_margin_must_be_finite(env: dict[str, str], value: str) -> None:
    assert "refresh.margin: must be a finite number" in str(config_error(env, f"[refresh]\nmargin = {value}\n"))


@pytest.mark.parametrize("value", ["0", "-1", "601", "'30'"])
def test_http_timeout_out_of_range_or_not_a_number_is_refused(env: dict[str, str], value: str) -> None:
    error = str(config_error(env, f"[http]\ntimeout = {value}\n"))
    assert error.startswith(f"{env['BROKER_CONFIG']}:2: http.timeout: "), error


def test_negative_refresh_margin_is_refused(env: dict[str, str]) -> None:
    assert "refresh.margin: must be at least 0" in str(config_error(env, "[refresh]\nmargin = -1\n"))


# --- provider sections ----------------------------------------------------------------------


ACME = """
[providers.acme]
flow = "pkce"
client_id = "abc"
port = 8123
timeout = 2.5
verify = false
scopes = ["openid", "email"]
headers = {X-A = "1", X-B = "2"}
authorize_url = "https://auth.example.com/authorize"
token = {url = "https://auth.example.com/token"}

[providers.beta]
"""


def test_provider_section_typed_getters_return_values(env: dict[str, str]) -> None:
    s = load(env, ACME).providers["acme"]
    assert s.path == ("providers", "acme")
    assert s.choice("flow", ["device", "pkce"]) == "pkce"
    assert s.text("client_id") == "abc"
    assert s.optional_text("client_secret") is None
    assert s.integer("port", min=1, max=65535) == 8123
    assert s.number("timeout") == 2.5
    assert s.number("port") == 8123.0
    assert s.flag("verify") is False
    assert s.text_list("scopes") == ("openid", "email")
    assert s.text_table("headers") == {"X-A": "1", "X-B": "2"}
    assert s.url("authorize_url") == "https://auth.example.com/authorize"
    assert s.section("token").url("url") == "https://auth.example.com/token"
    s.check_keys(["flow", "client_id", "port", "timeout", "verify", "scopes", "headers", "authorize_url", "token"])


def test_provider_section_defaults_apply_to_absent_keys(env: dict[str, str]) -> None:
    s = load(env, ACME).providers["beta"]
    assert s.text("client_id", "default") == "default"
    assert s.integer("port", 0, min=1) == 0
    assert s.number("timeout", 30.0) == 30.0
    assert s.flag("verify", True) is True
    assert s.choice("flow", ["device", "pkce"], "device") == "device"
    assert s.text_list("scopes", ["a"]) == ("a",)
    assert s.text_table("headers") == {}
    assert s.url("base_url", "https://api.example.com") == "https://api.example.com"
    assert s.section("token").data == {}
    assert s.local_path("file", "/default") == Path("/default")


def test_url_with_none_default_is_optional_but_still_checked(env: dict[str, str]) -> None:
    s = load(env, '[providers.acme]\nissuer = "not a url"\n').providers["acme"]
    assert s.url("token_endpoint", None) is None
    with pytest.raises(ConfigError, match=r":2: providers\.acme\.issuer: must be an absolute"):
        s.url("issuer", None)


def test_missing_required_key_points_at_its_table_header(env: dict[str, str]) -> None:
    s = load(env, ACME).providers["beta"]
    with pytest.raises(ConfigError, match=r":13: providers\.beta\.client_id: is required$"):
        s.text("client_id")


def test_sections_lists_every_provider_in_file_order(env: dict[str, str]) -> None:
    s = load(env, ACME)
    assert list(s.providers) == ["acme", "beta"]
    assert list(s.root.section("providers").sections()) == ["acme", "beta"]


def test_error_without_a_config_file_says_so(env: dict[str, str]) -> None:
    s = load_settings(env).root.section("providers").section("acme")
    with pytest.raises(ConfigError, match=r"^\(no config file\): providers\.acme\.client_id: is required$"):
        s.text("client_id")


def test_quoted_key_parts_are_shown_quoted(env: dict[str, str]) -> None:
    s = load(env, '[providers."gitlab.example.com"]\nurl = 1\n').providers["gitlab.example.com"]
    with pytest.raises(ConfigError, match=r':2: providers\."gitlab\.example\.com"\.url: must be a string'):
        s.url("url")


# --- the locator ----------------------------------------------------------------------------


LOCATOR = """\
# comment = 1
[providers]
acme.flow = "pkce"
acme.token.url = "https://x"
beta = {flow = "device", token = {url = "https://y"}}
text = '''
[fake]
gamma.flow = 1
'''
list = [
  {flow = 1},
  "]",
]

[providers . "my.host"]
"quoted.key" = 1
[[arrays]]
item = 1
"""


@pytest.mark.parametrize(
    ("table", "key", "line"),
    [
        (("providers",), None, 2),
        (("providers", "acme"), "flow", 3),
        (("providers", "acme"), None, 3),
        (("providers", "acme", "token"), "url", 4),
        (("providers", "beta"), "flow", 5),
        (("providers", "beta", "token"), "url", 5),
        (("providers", "beta"), "absent", 5),
        (("providers", "my.host"), "quoted.key", 16),
        (("providers", "my.host"), None, 15),
        (("arrays",), "item", 18),
        (("fake",), None, 1),
        (("providers", "gamma"), "flow", 2),
        (("nowhere",), "key", 1),
        ((), None, 1),
    ],
)
def test_locator_finds_headers_dotted_keys_and_inline_tables(
    table: tuple[str, ...], key: str | None, line: int
) -> None:
    tomllib.loads(LOCATOR)  # the fixture is valid TOML
    assert ConfigSource(None, LOCATOR).line_of(table, key) == line


LOOKALIKES = """\
[t]
matrix = [
  ["fake"],
  [1, 2]
]
note = \"\"\"\\
  [fake]
  _line_3 = 1
\"\"\"
[a.b.c]
x = 1
[a]
y = 2
"""


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize(
    ("table", "key", "line"),
    [
        (("t",), "matrix", 2),
        (("t",), "note", 6),
        (("fake",), None, 1),
        (("t",), "_line_3", 1),
        (("a", "b", "c"), "x", 11),
        (("a", "b"), None, 10),
        (("a",), None, 12),
        (("a",), "y", 13),
    ],
)
def test_locator_is_not_fooled_by_headers_and_keys_inside_values(
    newline: str, table: tuple[str, ...], key: str | None, line: int
) -> None:
    text = LOOKALIKES.replace("\n", newline)
    assert "fake" not in tomllib.loads(text)
    assert ConfigSource(None, text).line_of(table, key) == line


def test_locator_decodes_escapes_in_quoted_keys() -> None:
    source = ConfigSource(None, '\n[t]\n"caf\\u00e9" = 1\n')
    assert source.line_of(("t",), "café") == 3


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}=.,'\"\\#\n abc1-")), max_size=120), st.text(max_size=4))
def test_locator_never_crashes_and_stays_in_the_file(text: str, key: str) -> None:
    line = ConfigSource(None, text).line_of(("a", "b"), key)
    assert 1 <= line <= text.count("\n") + 1


# --- paths ----------------------------------------------------------------------------------


def test_paths_in_the_file_expand_home_and_variables(env: dict[str, str]) -> None:
    env["SOMEWHERE"] = "/srv"
    s = load(env, '[daemon]\nsocket = "~/b.sock"\n[store]\nstate_dir = "${SOMEWHERE}/$SOMEWHERE/state"\n')
    assert s.socket_path == Path(env["HOME"], "b.sock")
    assert s.state_dir == Path("/srv/srv/state")


def test_paths_from_the_environment_expand_home(env: dict[str, str]) -> None:
    env["BROKER_STATE_DIR"] = "~/state"
    assert load_settings(env).state_dir == Path(env["HOME"], "state")


def test_unset_variable_in_a_path_is_an_error(env: dict[str, str]) -> None:
    error = config_error(env, '[store]\n\nstate_dir = "$NOPE/state"\n')
    assert str(error).startswith(f"{env['BROKER_CONFIG']}:3: store.state_dir: $NOPE is not set")


def test_relative_path_in_the_file_is_an_error(env: dict[str, str]) -> None:
    error = config_error(env, '[daemon]\nsocket = "b.sock"\n')
    assert "daemon.socket: must be an absolute path" in str(error)


def test_provider_local_path_expands_home(env: dict[str, str]) -> None:
    s = load(env, '[providers.codex]\nfile = "~/.codex/auth.json"\n').providers["codex"]
    assert s.local_path("file") == Path(env["HOME"], ".codex/auth.json")


# --- the client's socket lookup -------------------------------------------------------------


def test_socket_lookup_prefers_the_environment(env: dict[str, str]) -> None:
    write_config(env, "this is not toml")
    env["BROKER_SOCKET"] = "/env/broker.sock"
    assert socket_path_from_env(env) == Path("/env/broker.sock")


def test_socket_lookup_honours_the_config_file(env: dict[str, str]) -> None:
    write_config(env, '[daemon]\nsocket = "/file/broker.sock"\n')
    assert socket_path_from_env(env) == Path("/file/broker.sock")


def test_socket_lookup_defaults_without_a_file(env: dict[str, str]) -> None:
    assert socket_path_from_env(env) == default_socket_path(env)


@pytest.mark.parametrize(
    "elsewhere",
    [
        '[store]\nbackend = "nope"  # the socket is not here\n',
        "[refresh]\nmargin = \n",
        '[providers.acme\ntype = "oauth"\n',
        "[providers.acme]\nflow = 'device\n",
        "[unknown]\nsocket = 1\n",
    ],
    ids=["bad value", "syntax error", "broken header", "unclosed string", "unknown table"],
)
def test_socket_lookup_reads_only_the_daemon_table(env: dict[str, str], elsewhere: str) -> None:
    write_config(env, f'[daemon]\nsocket = "/file/broker.sock"\n{elsewhere}')
    assert socket_path_from_env(env) == Path("/file/broker.sock")
    write_config(env, elsewhere)
    assert socket_path_from_env(env) == default_socket_path(env)


def test_socket_lookup_reads_a_dotted_or_inline_daemon_key(env: dict[str, str]) -> None:
    write_config(env, 'daemon.socket = "/dotted.sock"\n[store]\nbroken\n')
    assert socket_path_from_env(env) == Path("/dotted.sock")
    write_config(env, 'daemon = { socket = "/inline.sock" }\n')
    assert socket_path_from_env(env) == Path("/inline.sock")


def test_socket_lookup_reports_a_broken_daemon_table(env: dict[str, str]) -> None:
    write_config(env, '[store]\nbackend = "file"\n[daemon]\nsocket = "/a.sock\n')
    with pytest.raises(ConfigError, match=r"conf\.toml:4: "):
        socket_path_from_env(env)


def test_socket_lookup_validates_a_file_that_may_set_the_socket(env: dict[str, str]) -> None:
    write_config(env, "[daemon]\nsocket = 5\n")
    with pytest.raises(ConfigError, match=r":2: daemon\.socket: must be a string"):
        socket_path_from_env(env)


def test_socket_lookup_puts_a_bad_socket_on_its_line_when_another_table_does_not_parse(
    env: dict[str, str],
) -> None:
    write_config(env, "[store]\nbroken\n[daemon]\nsocket = 5\n")
    with pytest.raises(ConfigError, match=r"conf\.toml:4: daemon\.socket: must be a string"):
        socket_path_from_env(env)


def settled_config(env: dict[str, str], text: str, age_s: int = 60) -> Path:
    """A config file last written ``age_s`` ago, old enough for its socket to be remembered."""
    path = write_config(env, text)
    old = time.time_ns() - age_s * 1_000_000_000
    os.utime(path, ns=(old, old))
    Path(env["XDG_RUNTIME_DIR"]).mkdir(exist_ok=True)
    return path


def memo(env: dict[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"], "broker", MEMO)


def test_socket_lookup_remembers_a_settled_file_and_reads_the_memo(env: dict[str, str]) -> None:
    settled_config(env, '[daemon]\nsocket = "/file/broker.sock"\n')
    assert socket_path_from_env(env) == Path("/file/broker.sock")
    assert memo(env).stat().st_mode & 0o777 == 0o600
    entry = json.loads(memo(env).read_text())
    memo(env).write_text(json.dumps({**entry, "socket": "/remembered.sock"}))
    assert socket_path_from_env(env) == Path("/remembered.sock")


def test_socket_lookup_remembers_no_socket_and_no_file_just_written(env: dict[str, str]) -> None:
    settled_config(env, '[store]\nbackend = "file"\n')
    assert socket_path_from_env(env) == default_socket_path(env)
    assert json.loads(memo(env).read_text())["socket"] is None
    memo(env).unlink()
    write_config(env, '[daemon]\nsocket = "/file/broker.sock"\n')  # its mtime is now: another write may follow
    assert socket_path_from_env(env) == Path("/file/broker.sock")
    assert not memo(env).exists()


def test_socket_lookup_rereads_a_file_changed_in_any_way(env: dict[str, str]) -> None:
    path = settled_config(env, '[daemon]\nsocket = "/aaaa/broker.sock"\n')
    assert socket_path_from_env(env) == Path("/aaaa/broker.sock")
    before = path.stat()
    path.write_text('[daemon]\nsocket = "/bbbb/broker.sock"\n')  # same size, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime: the ctime still differs
    assert socket_path_from_env(env) == Path("/bbbb/broker.sock")
    settled_config(env, '[daemon]\nsocket = "/cccc/broker.sock"\n', age_s=120)  # replaced by another file
    assert socket_path_from_env(env) == Path("/cccc/broker.sock")


def test_socket_lookup_expands_a_remembered_value_in_each_environment(env: dict[str, str]) -> None:
    settled_config(env, '[daemon]\nsocket = "$SOCKETS/broker.sock"\n')
    assert socket_path_from_env({**env, "SOCKETS": "/a"}) == Path("/a/broker.sock")
    assert socket_path_from_env({**env, "SOCKETS": "/b"}) == Path("/b/broker.sock")
    with pytest.raises(ConfigError, match=r":2: daemon\.socket: \$SOCKETS is not set"):
        socket_path_from_env(env)


@pytest.mark.parametrize("spoil", ["readable by others", "not json", "another file's"])
def test_socket_lookup_ignores_a_memo_it_cannot_trust(env: dict[str, str], spoil: str) -> None:
    settled_config(env, '[daemon]\nsocket = "/file/broker.sock"\n')
    socket_path_from_env(env)
    entry = json.loads(memo(env).read_text())
    if spoil == "another file's":
        entry["identity"][0] = "/elsewhere/config.toml"
    memo(env).write_text("{" if spoil == "not json" else json.dumps({**entry, "socket": "/forged.sock"}))
    if spoil == "readable by others":
        memo(env).chmod(0o644)
    assert socket_path_from_env(env) == Path("/file/broker.sock")


def test_socket_lookup_reports_a_bad_socket_every_time(env: dict[str, str]) -> None:
    settled_config(env, "[daemon]\nsocket = 5\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match=r":2: daemon\.socket: must be a string"):
            socket_path_from_env(env)
    assert not memo(env).exists()


# --- robustness -----------------------------------------------------------------------------


HEADERS = ["[daemon]", "[store]", "[refresh]", "[providers]", "[providers.a]", "[[providers]]", "[x]"]
KEYS = ["socket", "log_level", "backend", "state_dir", "margin", "providers.b", "daemon", "store", "sockte"]
VALUES = [
    '"~/x"', '"$UNSET/x"', '"/abs"', '"rel"', '"keyring"', '"info"', '"\\u0000"', "-1", "1e400", "nan",
    "true", "{}", "{a = 1}", "[1, 'x']", "1979-05-27", '"""\nx"""', "",
]  # fmt: skip
GARBAGE = ["=", "#", "'", '"', ".", "[", "}", "\\", " ", "\r"]
KEY_VALUE = st.builds("{} = {}".format, st.sampled_from(KEYS), st.sampled_from(VALUES))
CLEAN = st.lists(st.sampled_from(HEADERS) | KEY_VALUE, max_size=8).map("\n".join)
DIRTY = st.lists(st.sampled_from(HEADERS) | KEY_VALUE | st.sampled_from(GARBAGE), max_size=12).map("".join)


def _load_text(data: bytes) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "config.toml")
        path.write_bytes(data)
        try:
            return load_settings({"HOME": tmp, "BROKER_CONFIG": str(path)})
        except ConfigError as exc:
            assert exc.message.startswith("~/config.toml") and exc.hint  # every error names the file
            return exc


@settings(max_examples=300, deadline=None)
@given(CLEAN | DIRTY)  # CLEAN mostly parses, so the semantic checks run too
def test_garbage_toml_raises_config_error_or_loads(text: str) -> None:
    assert isinstance(_load_text(text.encode()), Settings | ConfigError)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=80) | st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_garbage_bytes_raise_config_error_or_load(data: bytes) -> None:
    assert isinstance(_load_text(data), Settings | ConfigError)


def test_config_module_imports_only_the_standard_library() -> None:
    import broker.core.config

    allowed = set(sys.stdlib_module_names) | {"broker"}
    source = Path(broker.core.config.__file__).read_text()
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.strip().startswith(("import ", "from ")) and not line.strip().startswith("from __future__")
    }
    assert imported <= allowed
