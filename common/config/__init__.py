"""YAML configs with `_base_` inheritance, `-o key=value` overrides and schema checks."""
from common.config.loader import Config, ConfigError, dump_config, load_config, require

__all__ = ["Config", "ConfigError", "dump_config", "load_config", "require"]
