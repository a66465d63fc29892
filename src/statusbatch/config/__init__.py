"""Job configuration (SPEC §2): job files and the `do_not_contact` condition language."""

from statusbatch.config.conditions import (
    ConditionError,
    ConfigError,
    compile_condition,
    condition_schema,
    parse_condition,
)
from statusbatch.config.job import (
    BlocklistSection,
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

__all__ = [
    "BlocklistSection",
    "ConditionError",
    "ConfigError",
    "CooldownLimit",
    "CooldownSection",
    "DoNotContactRule",
    "DormancySection",
    "JobConfig",
    "JobSection",
    "RetentionSection",
    "SequencesSection",
    "compile_condition",
    "condition_schema",
    "load_job",
    "parse_condition",
]
