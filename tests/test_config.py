"""config.py: sizes, compression specs, and TOML files with every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbak import config
from eventbak.config import (
    MIN_ARCHIVE_SIZE,
    Compression,
    load_config,
    parse_archive_size,
    parse_compression,
    parse_size,
)
from eventbak.errors import ConfigError, UsageError

KiB = 1024
MiB = 1024**2
GiB = 1024**3

# -- sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (123, 123),
        ("123", 123),
        (65536, 65536),
        ("65536", 65536),
        ("64KiB", 64 * KiB),
        ("128MiB", 128 * MiB),
        ("1GiB", GiB),
        ("2TiB", 2 * 1024**4),
        ("64K", 64 * KiB),
        (" 5 MiB ", 5 * MiB),
        ("7B", 7),
        (0, 0),
    ],
)
def test_parse_size_valid(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", ["12 parsecs", "-1", "", "   ", "1.5GiB", "GiB", "1 GB", "0x10", "1e6", "64kib"]
)
def test_parse_size_invalid_strings(value: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_bools(value: bool) -> None:
    # bool is an int subclass: True must not silently mean one byte
    with pytest.raises(ValueError, match="not a size"):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (65536, MIN_ARCHIVE_SIZE),
        ("64KiB", 64 * KiB),
        ("128MiB", 128 * MiB),
        ("1GiB", GiB),
        ("4TiB", 4 * 1024**4),
    ],
)
def test_parse_archive_size_valid(value: str | int, expected: int) -> None:
    assert parse_archive_size(value) == expected


@pytest.mark.parametrize("value", [123, "123", 65535, "63KiB", 0, -1, "1K"])
def test_parse_archive_size_below_minimum(value: str | int) -> None:
    with pytest.raises(ValueError, match="below the minimum archive size of 64KiB"):
        parse_archive_size(value)


@pytest.mark.parametrize("value", ["5TiB", 4 * 1024**4 + 1])
def test_parse_archive_size_above_maximum(value: str | int) -> None:
    with pytest.raises(ValueError, match="above the maximum"):
        parse_archive_size(value)


@pytest.mark.parametrize("value", ["12 parsecs", "-1", "", "1.5GiB", True])
def test_parse_archive_size_invalid(value: str | int) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_archive_size(value)


# -- compression ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "mode", "level", "text", "suffix"),
    [
        ("auto", "auto", config.DEFAULT_ZSTD_LEVEL, "auto", ".tar.zst"),
        ("none", "none", config.DEFAULT_ZSTD_LEVEL, "none", ".tar"),
        ("zstd", "zstd", config.DEFAULT_ZSTD_LEVEL, "zstd:3", ".tar.zst"),
        ("zstd:1", "zstd", 1, "zstd:1", ".tar.zst"),
        ("zstd:19", "zstd", 19, "zstd:19", ".tar.zst"),
        ("zstd:22", "zstd", 22, "zstd:22", ".tar.zst"),
        (" ZSTD:5 ", "zstd", 5, "zstd:5", ".tar.zst"),
        ("Auto", "auto", config.DEFAULT_ZSTD_LEVEL, "auto", ".tar.zst"),
    ],
)
def test_parse_compression_valid(value: str, mode: str, level: int, text: str, suffix: str) -> None:
    c = parse_compression(value)
    assert c == Compression(mode, level)
    assert str(c) == text
    assert c.suffix == suffix
    # what str() gives parses back to the same thing (it is stored in events)
    assert parse_compression(str(c)) == c


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("zstd:0", "level must be 1 to 22"),
        ("zstd:23", "level must be 1 to 22"),
        ("zstd:99", "level must be 1 to 22"),
        ("zstd:-3", "level must be 1 to 22"),
        ("zstd:x", "level must be 1 to 22"),
        ("zstd:", "level must be 1 to 22"),
        ("gzip", "not one of auto, none, zstd"),
        ("", "not one of auto, none, zstd"),
        ("zstd3", "not one of auto, none, zstd"),
    ],
)
def test_parse_compression_invalid(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_compression(value)
    assert repr(value) in str(info.value)


# -- load_config: a good file ---------------------------------------------------------

FULL = """\
# a complete example
state_dir = "/var/lib/eventbak"

[vaults.local]
url = "file:///mnt/backup/vault"

[vaults.nas]
url = "file:///mnt/nas/eventbak"
archive_size = "256MiB"

[vaults.small]
url = "file:///srv/small"
archive_size = 1048576

[[datasets]]
name = "home"
paths = ["/home/me", "/etc"]
exclude = ["*.tmp", ".cache/", "node_modules/"]
compression = "zstd:9"
vault = "nas"

[[datasets]]
name = "photos"
paths = ["/srv/photos"]
compression = "none"
vault = "local"

[[datasets]]
name = "minimal"
paths = ["/opt"]
vault = "small"
"""


def write(tmp_path: Path, text: str | bytes, name: str = "eventbak.toml") -> Path:
    p = tmp_path / name
    if isinstance(text, str):
        p.write_text(text, encoding="utf-8")
    else:
        p.write_bytes(text)
    return p


def test_load_full_example(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL))
    assert cfg.state_dir == "/var/lib/eventbak"
    assert list(cfg.vaults) == ["local", "nas", "small"]
    assert cfg.vaults["local"].url == "file:///mnt/backup/vault"
    assert cfg.vaults["local"].archive_size == "128MiB"  # the default
    assert parse_archive_size(cfg.vaults["local"].archive_size) == config.DEFAULT_ARCHIVE_SIZE
    assert parse_archive_size(cfg.vaults["nas"].archive_size) == 256 * MiB
    assert parse_archive_size(cfg.vaults["small"].archive_size) == MiB
    assert [d.name for d in cfg.datasets] == ["home", "photos", "minimal"]
    home, photos, minimal = cfg.datasets
    assert home.paths == ["/home/me", "/etc"]
    assert home.exclude == ["*.tmp", ".cache/", "node_modules/"]
    assert parse_compression(home.compression) == Compression("zstd", 9)
    assert home.vault == "nas"
    assert photos.vault == "local"
    assert parse_compression(photos.compression) == Compression("none")
    assert minimal.vault == "small"
    assert minimal.exclude == []
    assert minimal.compression == "auto"


def test_load_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.state_dir is None
    assert cfg.vaults == {}
    assert cfg.datasets == []


def test_defaults_are_not_shared_between_loads(tmp_path: Path) -> None:
    text = '[[datasets]]\nname = "a"\npaths = ["/a"]\n'
    one = load_config(write(tmp_path, text, "one.toml"))
    one.datasets[0].exclude.append("*.x")
    two = load_config(write(tmp_path, text, "two.toml"))
    assert two.datasets[0].exclude == []


# -- load_config: every kind of mistake -----------------------------------------------

VAULT_X = '[vaults.x]\nurl = "file:///srv/x"\n'
DS = '[[datasets]]\nname = "{name}"\npaths = ["/a"]\n'

BAD: list[tuple[str, str | bytes, list[str]]] = [
    ("unknown top-level key", 'stat_dir = "/x"\n', ["stat_dir"]),
    ("unknown table", "[vault.x]\nurl = 'file:///x'\n", ["vault"]),
    ("wrong type state_dir", "state_dir = 5\n", ["state_dir", "str"]),
    ("empty state_dir", 'state_dir = ""\n', ["state_dir", "must not be empty"]),
    (
        "wrong type paths",
        '[[datasets]]\nname = "a"\npaths = "str"\n',
        ["datasets[0].paths", "array"],
    ),
    (
        "unknown dataset key",
        '[[datasets]]\nname = "a"\npaths = ["/a"]\nexlude = ["x"]\n',
        ["unknown key", "datasets[0].exlude"],
    ),
    ("dataset without name", '[[datasets]]\npaths = ["/a"]\n', ["datasets[0].name", "missing"]),
    ("dataset empty name", DS.format(name=""), ["datasets[0].name", "must not be empty"]),
    (
        "dataset without paths",
        '[[datasets]]\nname = "a"\npaths = []\n',
        ["datasets[0].paths", "at least one path"],
    ),
    (
        "dataset names a missing vault",
        VAULT_X + DS.format(name="a") + 'vault = "offsite"\n',
        ["datasets[0].vault", "'offsite'"],
    ),
    (
        "duplicate dataset names",
        DS.format(name="a") + DS.format(name="b") + DS.format(name="a"),
        ["datasets[2].name", "'a'", "defined twice"],
    ),
    (
        "bad archive_size text",
        VAULT_X + 'archive_size = "12 parsecs"\n',
        ["vaults.x.archive_size", "12 parsecs"],
    ),
    (
        "archive_size below minimum",
        VAULT_X + "archive_size = 123\n",
        ["vaults.x.archive_size", "below the minimum"],
    ),
    (
        "archive_size fractional",
        VAULT_X + 'archive_size = "1.5GiB"\n',
        ["vaults.x.archive_size", "not a size"],
    ),
    (
        "bad compression",
        DS.format(name="a") + 'compression = "gzip"\n',
        ["datasets[0].compression", "gzip"],
    ),
    (
        "bad zstd level",
        DS.format(name="a") + 'compression = "zstd:99"\n',
        ["datasets[0].compression", "1 to 22"],
    ),
    (
        "unknown storage class in the URL",
        '[vaults.x]\nurl = "s3://bucket/prefix?storage_class=COLD"\n',
        ["vaults.x", "unknown storage_class 'COLD'", "DEEP_ARCHIVE"],
    ),
    (
        "unknown storage class in the table",
        '[vaults.x]\nurl = "s3://bucket/prefix"\nstorage_class = "ICY"\n',
        ["vaults.x", "unknown storage_class 'ICY'"],
    ),
    (
        "URL and table disagree",
        '[vaults.x]\nurl = "s3://bucket/p?region=eu-west-1"\nregion = "us-east-1"\n',
        ["vaults.x", "region", "eu-west-1", "us-east-1"],
    ),
    (
        "part size below S3's minimum",
        '[vaults.x]\nurl = "s3://bucket/p"\npart_size = "1MiB"\n',
        ["vaults.x", "part_size", "5MiB"],
    ),
    (
        "S3 option on a file vault",
        '[vaults.x]\nurl = "file:///srv/x"\nstorage_class = "GLACIER"\n',
        ["vaults.x", "storage_class", "does not apply"],
    ),
    (
        "bad glacier vault name",
        '[vaults.x]\nurl = "glacier://my vault"\n',
        ["vaults.x", "Glacier vault name"],
    ),
    (
        "relative file URL",
        '[vaults.x]\nurl = "file://relative/dir"\n',
        ["vaults.x", "absolute path"],
    ),
    ("plain path as URL", '[vaults.x]\nurl = "/srv/x"\n', ["vaults.x", "file:///dir"]),
    ("invalid TOML", 'state_dir = "/x\n', ["invalid TOML"]),
    ("invalid TOML table", "[vaults.x\n", ["invalid TOML"]),
    ("duplicate TOML key", 'state_dir = "/a"\nstate_dir = "/b"\n', ["invalid TOML"]),
    ("not UTF-8", b'state_dir = "/home/caf\xe9"\n', ["not UTF-8"]),
    (
        "a vault's date tag with a format that is not a date",
        '[vaults.x]\nurl = "s3://b/p-{date:%Y/..}"\n',
        ["vaults.x", "date format"],
    ),
    (
        "malformed window",
        '[schedule]\nwindows = ["22:00-06:00", "25:00-06:00"]\n',
        ["key schedule.windows[1]", "25:00-06:00"],
    ),
    ("window of no length", '[schedule]\nwindows = "22:00-22:00"\n', ["schedule.windows"]),
    ("unknown timezone", '[schedule]\ntimezone = "Mars/Olympus"\n', ["schedule.timezone", "Mars"]),
    ("every that does not parse", '[schedule]\nevery = "fortnightly"\n', ["schedule.every"]),
    ("every of zero", '[schedule]\nevery = "0h"\n', ["schedule.every"]),
    (
        "upload_limit that does not parse",
        '[schedule]\nupload_limit = "08:00,fast"\n',
        ["schedule.upload_limit", "fast"],
    ),
    ("bare number upload_limit", '[schedule]\nupload_limit = "10"\n', ["unit"]),
    ("unknown schedule key", "[schedule]\nwindow = 'always'\n", ["schedule.window"]),
    ("no failures allowed", "[schedule]\nmax_failures = 0\n", ["schedule.max_failures"]),
    ("relative metrics file", '[schedule]\nmetrics_file = "m.prom"\n', ["metrics_file"]),
    (
        "a hook that does not exist",
        '[[datasets]]\nname = "a"\npaths = ["/a"]\nbefore = ["no-such-program-xyz --now"]\n',
        ["datasets[0].before[0]", "no-such-program-xyz"],
    ),
    (
        "a hook that does not split",
        '[[datasets]]\nname = "a"\npaths = ["/a"]\nafter = ["echo \'unclosed"]\n',
        ["datasets[0].after[0]", "shell line"],
    ),
    (
        "two datasets with one name",
        '[[datasets]]\nname = "a"\npaths = ["/a"]\n[[datasets]]\nname = "a"\npaths = ["/b"]\n',
        ["datasets[1].name", "twice"],
    ),
    (
        "a dataset naming an unknown vault",
        '[vaults.x]\nurl = "file:///x"\n[[datasets]]\nname = "a"\npaths = ["/a"]\nvault = "y"\n',
        ["datasets[0].vault", "'y'"],
    ),
]


def test_a_vault_url_with_a_date_tag_loads(tmp_path: Path) -> None:
    p = write(tmp_path, '[vaults.x]\nurl = "glacier://photos-{date:%Y-%m}?region=eu-west-1"\n')
    assert load_config(p).vaults["x"].url.endswith("{date:%Y-%m}?region=eu-west-1")


def test_a_valid_schedule_and_hooks_load(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[schedule]\nwindows = ["22:00-06:00", "12:00-13:00"]\ntimezone = "Europe/Berlin"\n'
        'every = "6h"\nupload_limit = "Mon-08:00,512KiB/s Sat-00:00,off"\n'
        '[[datasets]]\nname = "a"\npaths = ["/a"]\nbefore = ["true"]\nafter = ["/bin/true x"]\n',
    )
    cfg = load_config(p)
    assert cfg.schedule.windows == ["22:00-06:00", "12:00-13:00"]
    assert cfg.datasets[0].before == ["true"]


# msgspec reports keys below a dict (the [vaults.NAME] tables) as `vaults[...]`,
# which does not say which vault is wrong; these check that the message does.
BAD_IN_VAULT_TABLE: list[tuple[str, str, list[str]]] = [
    (
        "unknown key in vault",
        VAULT_X + 'archve_size = "1MiB"\n',
        ["unknown key", "vaults.x.archve_size"],
    ),
    ("wrong type url", "[vaults.x]\nurl = 3\n", ["vaults.x.url", "str"]),
    ("missing url", '[vaults.x]\narchive_size = "1MiB"\n', ["vaults.x.url", "missing"]),
    ("bool archive_size", VAULT_X + "archive_size = true\n", ["vaults.x.archive_size"]),
]


@pytest.mark.parametrize(
    ("text", "needles"),
    [b[1:] for b in BAD + BAD_IN_VAULT_TABLE],
    ids=[b[0] for b in BAD + BAD_IN_VAULT_TABLE],
)
def test_bad_config_names_file_and_key(
    tmp_path: Path, text: str | bytes, needles: list[str]
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg
    for needle in needles:
        assert needle in msg
    assert "\n" not in msg  # one line for the CLI
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 2


def test_unknown_top_level_key_is_worded_like_the_others(tmp_path: Path) -> None:
    p = write(tmp_path, 'stat_dir = "/x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(info.value) == f"config file {p}: unknown key stat_dir"


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(p)
    assert str(p) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_invalid_toml_message_has_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, 'state_dir = "/a"\n\n[vaults.x\nurl = "file:///x"\n')
    with pytest.raises(ConfigError, match=r"line 3") as info:
        load_config(p)
    assert str(p) in str(info.value)


def test_dataset_without_vault_among_several_vaults_is_an_error(tmp_path: Path) -> None:
    text = FULL.replace('paths = ["/opt"]\nvault = "small"\n', 'paths = ["/opt"]\n')
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert "datasets[2].vault" in str(exc.value) and "say which" in str(exc.value)
