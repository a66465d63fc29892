"""Job files (SPEC §2): every key, its default, and one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from statusbatch.config import (
    BlocklistSection,
    ConditionError,
    ConfigError,
    CooldownLimit,
    CooldownSection,
    DoNotContactRule,
    DormancySection,
    JobConfig,
    JobSection,
    RetentionSection,
    SequencesSection,
    load_job,
)

FULL = """
[job]
input = "data/in"
db = "/abs/out.duckdb"
parquet = "../pq"
events_per_range = 250000

[cooldown]
after_invite_days = 14
after_completion_days = 0

[[cooldown.limits]]
trigger = "invite"
count = 3
window_days = 90

[[cooldown.limits]]
trigger = "completion"
count = 1
window_days = 365

[blocklist]
no_show_threshold = 0

[[do_not_contact]]
name = "minors"
when = "age < 18"

[[do_not_contact]]
name = "dach staff"
when = "country in ('DE','AT') and role = 'staff'"

[sequences]
ooo_resume_days = 5

[dormancy]
dormant_after_days = 180
delete_after_archived_days = 30

[retention]
keep_as_of = 0
"""


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `jobs/` directory, with the working directory at its parent (paths in messages stay short)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    return tmp_path / "jobs"


def write(jobs: Path, text: str, name: str = "nightly.toml") -> Path:
    path = jobs / name
    path.write_text(text, encoding="utf-8")
    return Path("jobs") / name


def problem(jobs: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_job(write(jobs, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- defaults and values


def test_an_empty_file_gives_every_default(jobs: Path) -> None:
    config = load_job(write(jobs, ""))
    root = jobs.parent
    assert config.path == (jobs / "nightly.toml").resolve()
    assert config.job.input == (root / "sample_data").resolve()
    assert config.job.db == (root / "out" / "statusbatch.duckdb").resolve()
    assert config.job.parquet is None
    assert config.job.events_per_range == 2_500_000
    assert config.cooldown == CooldownSection(after_invite_days=30, after_completion_days=90, limits=())
    assert config.blocklist == BlocklistSection(no_show_threshold=2)
    assert config.do_not_contact == ()
    assert config.sequences == SequencesSection(ooo_resume_days=0)
    assert config.dormancy == DormancySection(dormant_after_days=365, delete_after_archived_days=90)
    assert config.retention == RetentionSection(keep_as_of=7)


def test_empty_sections_give_defaults(jobs: Path) -> None:
    text = "[job]\n[cooldown]\n[blocklist]\n[sequences]\n[dormancy]\n[retention]\n"
    assert load_job(write(jobs, text)).digest() == load_job(write(jobs, "", "empty.toml")).digest()


def test_every_key_is_read(jobs: Path) -> None:
    config = load_job(write(jobs, FULL))
    assert config.job.input == (jobs / "data" / "in").resolve()
    assert config.job.db == Path("/abs/out.duckdb")
    assert config.job.parquet == (jobs.parent / "pq").resolve()
    assert config.job.events_per_range == 250000
    assert config.cooldown == CooldownSection(
        after_invite_days=14,
        after_completion_days=0,
        limits=(CooldownLimit("invite", 3, 90), CooldownLimit("completion", 1, 365)),
    )
    assert config.blocklist.no_show_threshold == 0
    assert config.do_not_contact == (
        DoNotContactRule("minors", "age < 18"),
        DoNotContactRule("dach staff", "country in ('DE','AT') and role = 'staff'"),
    )
    assert config.sequences.ooo_resume_days == 5
    assert config.dormancy == DormancySection(dormant_after_days=180, delete_after_archived_days=30)
    assert config.retention.keep_as_of == 0


def test_paths_are_relative_to_the_job_file_not_the_working_directory(jobs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(jobs, '[job]\ninput = "in"\n').resolve()
    monkeypatch.chdir("/")
    assert load_job(path).job.input == jobs.resolve() / "in"


def test_dotted_keys_and_inline_tables_are_plain_toml(jobs: Path) -> None:
    text = 'cooldown.after_invite_days = 7\ndo_not_contact = [{ name = "minors", when = "age < 18" }]\n'
    config = load_job(write(jobs, text))
    assert config.cooldown.after_invite_days == 7
    assert config.do_not_contact == (DoNotContactRule("minors", "age < 18"),)


def test_the_config_is_frozen(jobs: Path) -> None:
    config = load_job(write(jobs, ""))
    with pytest.raises(AttributeError):
        config.retention = RetentionSection(1)  # type: ignore[misc]


# ---------------------------------------------------------------- digest and overrides


def test_digest_is_stable_and_ignores_locations(jobs: Path) -> None:
    here = load_job(write(jobs, FULL))
    (jobs / "elsewhere").mkdir()
    there = load_job(write(jobs, FULL.replace('"data/in"', '"other"'), "elsewhere/copy.toml"))
    assert here.digest() == there.digest()
    assert len(here.digest()) == 64 and int(here.digest(), 16) >= 0
    assert here.with_overrides(db=Path("x.duckdb")).digest() == here.digest()


def test_digest_is_a_known_value_for_the_defaults(jobs: Path) -> None:
    """Pinned so that a refactoring cannot silently change the digests recorded in `runs`."""
    assert load_job(write(jobs, "")).digest() == "48b51d86c42ae329f7352eeb342e24dacf84da280c3421a221d40e452a8251df"


def test_defaults_written_out_have_the_same_digest(jobs: Path) -> None:
    explicit = "[cooldown]\nafter_invite_days = 30\n[retention]\nkeep_as_of = 7\n"
    assert load_job(write(jobs, explicit)).digest() == load_job(write(jobs, "", "empty.toml")).digest()


@pytest.mark.parametrize(
    "change",
    [
        ("after_invite_days = 14", "after_invite_days = 15"),
        ("count = 3", "count = 4"),
        ('trigger = "completion"', 'trigger = "invite"'),
        ("no_show_threshold = 0", "no_show_threshold = 1"),
        ('name = "minors"', 'name = "kids"'),
        ("age < 18", "age < 16"),
        ("ooo_resume_days = 5", "ooo_resume_days = 6"),
        ("dormant_after_days = 180", "dormant_after_days = 181"),
        ("delete_after_archived_days = 30", "delete_after_archived_days = 31"),
        ("keep_as_of = 0", "keep_as_of = 1"),
    ],
)
def test_digest_changes_with_every_setting(jobs: Path, change: tuple[str, str]) -> None:
    assert change[0] in FULL
    before = load_job(write(jobs, FULL)).digest()
    assert load_job(write(jobs, FULL.replace(change[0], change[1]), "changed.toml")).digest() != before


def test_overrides_are_relative_to_the_working_directory(jobs: Path) -> None:
    config = load_job(write(jobs, FULL))
    cwd = Path.cwd().resolve()
    overridden = config.with_overrides(input=Path("elsewhere"), db=Path("x.duckdb"), parquet=cwd / "pq2")
    assert overridden.job.input == cwd / "elsewhere"
    assert overridden.job.db == cwd / "x.duckdb"
    assert overridden.job.parquet == cwd / "pq2"
    assert overridden.cooldown == config.cooldown and overridden.path == config.path
    assert config.with_overrides() == config
    assert config.with_overrides(db=Path("y.duckdb")).job.input == config.job.input


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cooldown]\nafter_invite_days = -1", "[cooldown] after_invite_days: expected a whole number >= 0, got -1"),
        ("[cooldown]\nafter_invite_days = true", "[cooldown] after_invite_days: expected a whole number >= 0, got true (a boolean)"),
        ("[cooldown]\nafter_invite_days = 1.0", "[cooldown] after_invite_days: expected a whole number >= 0, got 1.0 (a float)"),
        ('[cooldown]\nafter_invite_days = "30"', '[cooldown] after_invite_days: expected a whole number >= 0, got "30" (a string)'),
        ("[cooldown]\nafter_completion_days = [1]", "[cooldown] after_completion_days: expected a whole number >= 0, got an array"),
        ("[cooldown]\nafter_invite_days = 100001", "[cooldown] after_invite_days: expected at most 100000 days, got 100001"),
        ("[blocklist]\nno_show_threshold = -2", "[blocklist] no_show_threshold: expected a whole number >= 0, got -2"),
        ("[sequences]\nooo_resume_days = 1.5", "[sequences] ooo_resume_days: expected a whole number >= 0, got 1.5 (a float)"),
        ("[dormancy]\ndormant_after_days = false", "[dormancy] dormant_after_days: expected a whole number >= 0, got false"),
        ("[dormancy]\ndelete_after_archived_days = -90", "[dormancy] delete_after_archived_days: expected a whole number >= 0"),
        ("[retention]\nkeep_as_of = 1979-05-27", "[retention] keep_as_of: expected a whole number >= 0, got 1979-05-27"),
        ("[job]\ninput = 5", "[job] input: expected a path (a non-empty string), got 5"),
        ('[job]\ndb = ""', '[job] db: expected a path (a non-empty string), got "" (a string)'),
        ("[job]\nparquet = false", "[job] parquet: expected a path (a non-empty string), got false (a boolean)"),
        ("job = 1", "[job]: expected a table, got 1"),
        ('cooldown = "x"', '[cooldown]: expected a table, got "x" (a string)'),
    ],
)
def test_wrong_values_name_the_key(jobs: Path, text: str, message: str) -> None:
    assert problem(jobs, text).startswith("jobs/nightly.toml: ")
    assert message in problem(jobs, text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[coldown]", "jobs/nightly.toml: unknown section [coldown] (did you mean [cooldown]?)"),
        ("[settings]\nx = 1", "jobs/nightly.toml: unknown section [settings]"),
        ("verbose = true", "jobs/nightly.toml: unknown key 'verbose'"),
        ("[cooldown]\nafter_invite_day = 3", "[cooldown]: unknown key 'after_invite_day' (did you mean 'after_invite_days'?)"),
        ("[job]\noutput = 'x'", "[job]: unknown key 'output'"),
        ("[blocklist.extra]\nx = 1", "[blocklist]: unknown key 'extra'"),
        ("[retention]\nkeep = 3", "[retention]: unknown key 'keep'"),
        (
            '[[cooldown.limits]]\ntrigger = "invite"\ncount = 1\nwindow_days = 1\nwindow = 3',
            "[[cooldown.limits]] #1: unknown key 'window'",
        ),
        ('[[do_not_contact]]\nname = "a"\nwhen = "x = 1"\nenabled = true', "[[do_not_contact]] #1: unknown key 'enabled'"),
    ],
)
def test_unknown_keys_are_refused_at_every_level(jobs: Path, text: str, message: str) -> None:
    assert message in problem(jobs, text)


LIMIT = '[[cooldown.limits]]\ntrigger = "invite"\ncount = 2\nwindow_days = 30\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LIMIT + '[[cooldown.limits]]\ntrigger = "invite"\nwindow_days = 30', "[[cooldown.limits]] #2: missing required key 'count'"),
        ("[[cooldown.limits]]\ncount = 2\nwindow_days = 30", "[[cooldown.limits]] #1: missing required key 'trigger'"),
        ('[[cooldown.limits]]\ntrigger = "invite"\ncount = 2', "[[cooldown.limits]] #1: missing required key 'window_days'"),
        (LIMIT.replace('"invite"', '"invites"'), '[[cooldown.limits]] #1 trigger: expected "invite" or "completion", got "invites"'),
        (LIMIT.replace('"invite"', "1"), '[[cooldown.limits]] #1 trigger: expected "invite" or "completion", got 1'),
        (LIMIT.replace("count = 2", "count = 0"), "[[cooldown.limits]] #1 count: expected a whole number >= 1, got 0"),
        (LIMIT.replace("count = 2", "count = 2.5"), "[[cooldown.limits]] #1 count: expected a whole number >= 1, got 2.5"),
        (LIMIT.replace("window_days = 30", "window_days = 0"), "[[cooldown.limits]] #1 window_days: expected a whole number >= 1, got 0"),
        ("[cooldown.limits]\ntrigger = 'invite'", "[cooldown] limits: expected an array of tables [[cooldown.limits]], got a table"),
        ("[cooldown]\nlimits = 3", "[cooldown] limits: expected an array of tables [[cooldown.limits]], got 3"),
        ("[cooldown]\nlimits = [1, 2]", "[cooldown] limits: expected an array of tables [[cooldown.limits]], got an array"),
    ],
)
def test_limits(jobs: Path, text: str, message: str) -> None:
    assert message in problem(jobs, text)


RULE = '[[do_not_contact]]\nname = "minors"\nwhen = "age < 18"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[do_not_contact]]\nwhen = "age < 18"', "[[do_not_contact]] #1: missing required key 'name'"),
        (RULE + '[[do_not_contact]]\nname = "staff"', "[[do_not_contact]] #2: missing required key 'when'"),
        (RULE + RULE, "[[do_not_contact]] #2 name: duplicate rule name 'minors' (already used by #1)"),
        ('[[do_not_contact]]\nname = ""\nwhen = "a = 1"', '[[do_not_contact]] #1 name: expected a non-empty string, got ""'),
        ('[[do_not_contact]]\nname = 1\nwhen = "a = 1"', "[[do_not_contact]] #1 name: expected a non-empty string, got 1"),
        ('[[do_not_contact]]\nname = "x"\nwhen = true', "[[do_not_contact]] #1 when: expected a non-empty string, got true"),
        ("[do_not_contact]\nname = 'x'", "do_not_contact: expected an array of tables [[do_not_contact]], got a table"),
        ("do_not_contact = 'age < 18'", "do_not_contact: expected an array of tables [[do_not_contact]], got \"age < 18\""),
    ],
)
def test_do_not_contact_rules(jobs: Path, text: str, message: str) -> None:
    assert message in problem(jobs, text)


def test_a_condition_with_bad_syntax_fails_at_load_naming_file_and_rule(jobs: Path) -> None:
    with pytest.raises(ConditionError) as caught:
        load_job(write(jobs, '[[do_not_contact]]\nname = "minors"\nwhen = "age << 18"\n'))
    assert str(caught.value) == (
        "jobs/nightly.toml: do_not_contact rule 'minors': syntax error at column 6: "
        "unexpected '<', expected a column or a value"
    )
    assert caught.value.rule_name == "minors"


def test_columns_are_not_checked_at_load(jobs: Path) -> None:
    """Which columns exist is only known from the people export, at run time."""
    config = load_job(write(jobs, '[[do_not_contact]]\nname = "x"\nwhen = "no_such_column = 1"\n'))
    assert config.do_not_contact[0].when == "no_such_column = 1"


def test_invalid_toml(jobs: Path) -> None:
    message = problem(jobs, "[cooldown]\nafter_invite_days = \n")
    assert message.startswith("jobs/nightly.toml: invalid TOML: ")
    assert "line 2" in message


def test_duplicate_toml_keys_are_invalid_toml(jobs: Path) -> None:
    assert "invalid TOML" in problem(jobs, "[blocklist]\nno_show_threshold = 1\nno_show_threshold = 2\n")


def test_not_utf8(jobs: Path) -> None:
    (jobs / "latin1.toml").write_bytes('[[do_not_contact]]\nname = "é"\nwhen = "a = 1"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml: not UTF-8 text"):
        load_job(Path("jobs/latin1.toml"))


def test_missing_file(jobs: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_job(Path("jobs/missing.toml"))
    assert str(caught.value) == "jobs/missing.toml: job file not found"


def test_unreadable_file(jobs: Path) -> None:
    with pytest.raises(ConfigError, match=r"^jobs: cannot read the job file: "):
        load_job(Path("jobs"))


def test_job_config_can_be_built_in_code(tmp_path: Path) -> None:
    """Other modules' tests build configs directly; sections default like the file does."""
    config = JobConfig(path=tmp_path / "j.toml", job=JobSection(input=tmp_path, db=tmp_path / "db"))
    assert config.cooldown == CooldownSection() and config.retention == RetentionSection()
    assert config.digest() == load_job(write_default(tmp_path)).digest()


def write_default(tmp_path: Path) -> Path:
    path = tmp_path / "default.toml"
    path.write_text("")
    return path


@pytest.mark.parametrize("value", ["-1", "1.5", '"many"'])
def test_events_per_range_is_a_whole_number(jobs: Path, value: str) -> None:
    assert f"[job] events_per_range: expected a whole number >= 0, got {value}" in problem(
        jobs, f"[job]\nevents_per_range = {value}\n"
    )


def test_events_per_range_does_not_change_the_digest(jobs: Path) -> None:
    """It bounds memory and never changes a result, so it is no part of what the run computes."""
    assert load_job(write(jobs, "[job]\nevents_per_range = 1\n")).digest() == load_job(write(jobs, "", "empty.toml")).digest()
