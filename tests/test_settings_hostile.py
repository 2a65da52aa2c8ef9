"""Which database, and no secret shown: hostile and broken input to :mod:`settings`
(issue #21). No database here; the end-to-end side is tests/reliability/test_secrets.py.

``mask_url`` and ``mask_secrets`` hide every password a URL or a libpq connection string
can carry (the userinfo, ``password=``, ``sslpassword=`` and their cousins, in any case,
percent-encoded or repeated, inside a ``dsn=`` value), keep the rest of the URL as the
operator typed it, and never crash or hang on what they are given. ``--db ""`` is
refused, not read as "not given".
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote_plus

import pytest
import sqlalchemy as sa
from alembic.config import Config
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cowrieprocessor.settings import (
    ENV_DATA_DIR,
    ENV_URL,
    MaskedOutput,
    SettingsError,
    default_sqlite_url,
    is_secret_key,
    mask_secrets,
    mask_url,
    parse_url,
    resolve_database_url,
)

SECRET = "S3cr3t"  # a value no other part of the URLs below contains

# (URL, what must stay readable): every URL holds SECRET, and nothing else of it may show
CORPUS = [
    ("postgresql://u@127.0.0.1:1/db?password=S3cr3t", ["u@127.0.0.1:1/db?password=***"]),
    (
        "postgresql+psycopg2://u@h:5432/db?sslmode=require&password=S3cr3t",
        ["postgresql+psycopg2://u@h:5432/db?sslmode=require&password=***"],
    ),
    ("postgresql://u:S3cr3t@h/db", ["postgresql://u:***@h/db"]),
    ("postgresql://u:S3cr3t@h/db?sslpassword=S3cr3t", ["u:***@h/db?sslpassword=***"]),
    ("postgresql://h/db?PassWord=S3cr3t&PASSWORD=S3cr3t", ["PassWord=***&PASSWORD=***"]),
    ("postgresql://h/db?pass%77ord=S3cr3t", ["pass%77ord=***"]),  # libpq decodes keys
    ("postgresql://h/db?pass%2577ord=S3cr3t", ["pass%2577ord=***"]),  # and twice, to be safe
    ("postgresql://h/db?password=S3%63r3t", ["password=***"]),  # an encoded value
    ("postgresql://h/db?password=a&password=S3cr3t", ["password=***&password=***"]),
    ("postgresql://h/db?password =S3cr3t", ["password =***"]),  # psycopg2 sends it on
    ("postgresql://h/db?oauth_client_secret=S3cr3t", ["oauth_client_secret=***"]),
    ("postgresql://h/db?passwd=S3cr3t&pwd=S3cr3t", ["passwd=***&pwd=***"]),
    (
        "postgresql://h/db?dsn=host%3Dh%20password%3DS3cr3t&sslmode=require",
        ["postgresql://h/db?dsn=***&sslmode=require"],
    ),
    (
        "postgresql://h/db?options=postgresql://u:S3cr3t@x/y",
        ["postgresql://h/db?options=postgresql://u:***@x/y"],
    ),
    ("postgresql://u:p@S3cr3t@h/db", ["@h/db"]),  # an '@' not percent-encoded
    ("postgresql://u:S3/cr?3t@h/db?sslmode=disable", ["@h/db?sslmode=disable"]),
    ("postgresql://u:S3 cr3t@h/db", ["@h/db"]),  # a space not percent-encoded
    ("postgresql://u@x:S3cr3t@h/db", ["@h/db"]),  # an '@' in the user name
    ("postgresql://:S3cr3t@h/db", ["postgresql://:***@h/db"]),  # no user name
    ("postgresql://u:S3cr3t@[::1]:5432/db", ["@[::1]:5432/db"]),
    ("postgresql://u:%53%33cr3t@h/db", ["postgresql://u:***@h/db"]),
    ("host=h password=S3cr3t dbname=d", ["host=h password=*** dbname=d"]),  # not a URL
    ("host=h password = 'S3 cr\\'3t' dbname=d", ["host=h password = '***' dbname=d"]),
    ("postgresql://h:5432/db?application_name=S3cr3t@x", []),  # SQLAlchemy: user h
]

# URLs without a secret: shown exactly as typed (query order, encoding and all)
PLAIN = [
    "postgresql://u@h:5432/db?sslmode=require&application_name=a%20b",
    "postgresql+psycopg2://u@[::1]:5432/db?passfile=/home/u/.pgpass&service=prod",
    "postgresql://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
    "sqlite:////var/lib/cowrie/cowrie.sqlite",
    "sqlite:///file:cowrie.sqlite?mode=ro&uri=true",
    "sqlite://",
]


def _leaks(secret: str, shown: str) -> bool:
    return any(form in shown or form in unquote_plus(shown) for form in _forms(secret))


def _forms(secret: str) -> set[str]:
    """The secret as it may stand in a URL: plain, and percent-encoded either way."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe="")}


@pytest.mark.parametrize(("url", "kept"), CORPUS, ids=[c[0] for c in CORPUS])
def test_mask_url_hides_every_secret_and_keeps_the_rest(url: str, kept: list[str]) -> None:
    shown = mask_url(url)
    assert not _leaks(SECRET, shown), shown
    assert "***" in shown
    for piece in kept:
        assert piece in shown


@pytest.mark.parametrize(("url", "kept"), CORPUS, ids=[c[0] for c in CORPUS])
def test_mask_secrets_hides_them_inside_an_error_message(url: str, kept: list[str]) -> None:
    text = f"cowrie-db check: error: cannot connect to {url}: connection refused\nnext line"
    shown = mask_secrets(text)
    assert not _leaks(SECRET, shown), shown
    assert shown.startswith("cowrie-db check: error: cannot connect to ")
    assert shown.endswith("connection refused\nnext line")


def test_masking_twice_keeps_the_sentence_around_the_url() -> None:
    """``cowrie-db`` masks the URL, writes ``cannot connect to URL: detail``, and masks
    the whole line again: the ':' after the URL stays."""
    line = f"cannot connect to {mask_url('postgresql://h/db?password=S3cr3t')}: refused"
    assert mask_secrets(line) == "cannot connect to postgresql://h/db?password=***: refused"
    assert mask_secrets("password=***x: y") == "password=*** y"  # more than punctuation


@pytest.mark.parametrize("url", PLAIN)
def test_a_url_without_a_secret_is_shown_exactly_as_typed(url: str) -> None:
    assert mask_url(url) == url
    assert mask_secrets(f"to {url}: refused") == f"to {url}: refused"


def test_a_url_that_does_not_parse_hides_a_port_that_is_not_a_number() -> None:
    """``user:secret/db``, '@host' forgotten: a port to the parser, a password to the user."""
    assert mask_url("postgresql://u:S3cr3t/db") == "postgresql://u:***/db"
    assert mask_url("postgresql://u:S3cr3t@[::1]:S3cr3t/db") == "postgresql://u:***@[::1]:***/db"


def test_a_parsed_url_hides_its_query_secrets_too() -> None:
    """SQLAlchemy's own ``hide_password`` hides the userinfo only."""
    url = sa.make_url("postgresql://u:S3cr3t@h/db?sslpassword=S3cr3t&password=S3cr3t&x=1")
    assert str(url).count(SECRET) == 2  # what SQLAlchemy alone would print
    assert mask_url(url) == "postgresql://u:***@h/db?password=***&sslpassword=***&x=1"


@pytest.mark.parametrize(
    "text",
    [
        "PGPASSWORD=S3cr3t cowrie-db check",
        "{'password': 'S3cr3t', 'host': 'h'}",
        '{"sslpassword": "S3cr3t"}',
        "connect(host='h', password='S3cr3t')",
        "dsn: 'user=u password=S3cr3t dbname=d'",
    ],
)
def test_mask_secrets_hides_libpq_pairs_environment_and_dict_reprs(text: str) -> None:
    shown = mask_secrets(text)
    assert SECRET not in shown and "***" in shown


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("sslpassword", True),
        ("PGPASSWORD", True),
        ("Pass%77ord", True),
        ("oauth_client_secret", True),
        ("passfile", False),  # a path, readable
        ("service", False),
        ("sslkey", False),  # a path too
        ("sslmode", False),
        ("user", False),
    ],
)
def test_which_parameters_are_secret(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(
    "text",
    [
        "a=" * 20_000,
        "postgresql://u:" * 5_000,
        "?password=&" * 10_000,
        "x" * 100_000 + "://u:p",
        "%25" * 10_000 + "=1",
        "'password': '" * 5_000,
        "://" * 100_000,
        "a" * 100_000,
        "postgresql://h/db?application_name=" + "a" * 100_000,
        "://u:@?" * 50_000,
    ],
    ids=[
        *("pairs", "schemes", "params", "long", "encoded", "dicts"),
        *("separators", "letters", "value", "userinfos"),
    ],
)
def test_hostile_text_is_masked_without_crashing(text: str) -> None:
    """Each pattern starts only where a scheme or a key can: no run of text is read once
    per position (a quadratic scan of these took minutes)."""
    assert isinstance(mask_secrets(text), str)
    assert isinstance(mask_url(text), str)


# --- the property: whatever the secret and the URL's shape, the secret never shows ------

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
PLAIN_VALUES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_./", max_size=12)
SECRET_KEYS = st.sampled_from(
    [
        *("password", "sslpassword", "PASSWORD", "PassWord", "%70assword", "pass%77ord"),
        *("ssl%50assword", "oauth_client_secret", "passwd"),
    ]
)
OTHER_KEYS = st.sampled_from(
    ["sslmode", "application_name", "connect_timeout", "passfile", "service", "options"]
)
# any text, as a marker-prefixed secret so that it cannot coincide with the other parts
SECRETS = st.text(st.characters(exclude_categories=["Cs"]), min_size=0, max_size=20).map(
    lambda s: "S3" + s
)


def _quote_all(text: str) -> str:
    return quote(text, safe="")


ENCODE: st.SearchStrategy[Callable[[str], str]] = st.sampled_from(
    [quote_plus, _quote_all]
)  # '+' or '%20' for a space


@st.composite
def urls_with_a_secret(draw: st.DrawFn) -> tuple[str, str]:
    secret = draw(SECRETS)
    encode = draw(ENCODE)
    driver = draw(st.sampled_from(["postgresql", "postgresql+psycopg2", "sqlite"]))
    user = draw(NAMES)
    host = draw(st.sampled_from(["h", "127.0.0.1", "[::1]", "db.example.org", ""]))
    port = draw(st.sampled_from(["", ":5432", ":1"]))
    database = draw(st.sampled_from(["", "/db", "/cowrie", "/a/b"]))
    count = draw(st.integers(0, 3))
    params = [(draw(OTHER_KEYS), encode(draw(PLAIN_VALUES))) for _ in range(count)]
    in_userinfo = draw(st.booleans())
    in_query = draw(st.integers(0 if in_userinfo else 1, 3))
    params += [(draw(SECRET_KEYS), encode(secret)) for _ in range(in_query)]
    params = draw(st.permutations(params))
    userinfo = f"{user}:{quote(secret, safe='')}@" if in_userinfo else f"{user}@"
    query = "?" + "&".join(f"{k}={v}" for k, v in params) if params else ""
    return f"{driver}://{userinfo}{host}{port}{database}{query}", secret


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(urls_with_a_secret())
@example(("postgresql://u:S3%40%3A%2F%3F%23@h/db?sslmode=require", "S3@:/?#"))
@example(("postgresql://u@h/db?pass%77ord=S3+x%26y&password=S3+x%26y", "S3 x&y"))
def test_property_the_secret_never_shows(case: tuple[str, str]) -> None:
    url, secret = case
    assert not _leaks(secret, mask_url(url)), mask_url(url)
    assert not _leaks(secret, mask_url(sa.make_url(url))), mask_url(sa.make_url(url))
    text = f"error: could not connect to {url}: refused"
    assert not _leaks(secret, mask_secrets(text)), mask_secrets(text)


@st.composite
def urls_without_a_secret(draw: st.DrawFn) -> str:
    params = [
        (draw(OTHER_KEYS), quote_plus(draw(PLAIN_VALUES))) for _ in range(draw(st.integers(0, 4)))
    ]
    query = "?" + "&".join(f"{k}={v}" for k, v in params) if params else ""
    return f"postgresql://{draw(NAMES)}@{draw(NAMES)}:5432/{draw(NAMES)}{query}"


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(urls_without_a_secret())
def test_property_the_rest_is_kept_byte_for_byte(url: str) -> None:
    assert mask_url(url) == url


# --- which database: --db "" is refused ---------------------------------------------------


@pytest.mark.parametrize("given_value", ["", "   ", "\t\n"])
def test_an_empty_db_option_is_refused_not_read_as_absent(
    given_value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_URL, "sqlite:////elsewhere.sqlite")
    with pytest.raises(SettingsError) as raised:
        resolve_database_url(given_value)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("--db is empty (an unset variable in a script?)")
    assert ENV_URL in message and str(tmp_path / "cowrie.sqlite") in message
    with pytest.raises(SettingsError, match=r"^-x db is empty"):
        resolve_database_url(given_value, option="-x db")


@pytest.mark.parametrize("env_value", [None, "", "  "])
def test_an_empty_or_absent_environment_variable_means_unset(
    env_value: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``COWRIE_DB_URL= make demo``: the Makefile's way of saying "use the default"."""
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    if env_value is None:
        monkeypatch.delenv(ENV_URL, raising=False)
    else:
        monkeypatch.setenv(ENV_URL, env_value)
    assert resolve_database_url(None) == default_sqlite_url()
    assert str(tmp_path) in resolve_database_url(None)


def test_the_order_explicit_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, " sqlite:////from-env.sqlite ")
    assert resolve_database_url(None) == "sqlite:////from-env.sqlite"
    assert resolve_database_url(" sqlite:////given.sqlite\n") == "sqlite:////given.sqlite"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:S3cr3t/db",  # the parser's error quotes the "port"
        "postgresql://u:S3cr3t@h:S3cr3t/db",
        "not a url password=S3cr3t",
        "://u:S3cr3t@h/db",
    ],
)
def test_a_malformed_url_is_refused_in_one_line_that_shows_no_secret(url: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_url(url)
    assert "is not a valid URL" in str(raised.value) and "\n" not in str(raised.value)
    whole = "".join(traceback.format_exception(raised.value))  # chained causes too
    assert SECRET not in whole, whole


def test_alembic_printing_through_a_masked_output_shows_no_secret() -> None:
    """What ``alembic current -v`` prints, by Alembic's own printing function."""
    buffer = io.StringIO()
    cfg = Config(stdout=MaskedOutput(buffer))  # type: ignore[arg-type]
    url = sa.make_url("postgresql+psycopg2://u:S3cr3t@h/db?password=S3cr3t&sslmode=disable")
    cfg.print_stdout("Current revision(s) for %s:", str(url))
    assert buffer.getvalue() == (
        "Current revision(s) for postgresql+psycopg2://u:***@h/db?password=***&sslmode=disable:\n"
    )
    assert MaskedOutput(buffer).getvalue() == buffer.getvalue()  # the rest is the stream's
