"""Framework-independent core: configs, data, matching, box ops, evaluation, logging (numpy only)."""
