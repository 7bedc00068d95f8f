"""Reason codes for quarantined frames.

Every frame that is not counted lands in the quarantine table with exactly one of
these codes. The codes are part of the product's contract (README, docs/semantics.md, tests, the
progress line); the JVM fast parser emits the first five with the same spelling.
"""

__all__ = ["MALFORMED_JSON", "MISSING_UID", "MISSING_TS", "BAD_UID", "BAD_TS", "TS_OUTLIER", "LATE", "PARSE_REASONS",
           "ALL_REASONS"]

MALFORMED_JSON = "malformed_json"  # not a JSON document, or its root is not an object
MISSING_UID = "missing_uid"        # no root-level "uid"
MISSING_TS = "missing_ts"          # no root-level "ts"
BAD_UID = "bad_uid"                # root "uid" is not a non-empty string
BAD_TS = "bad_ts"                  # root "ts" is not an integer / numeric string of unix seconds
TS_OUTLIER = "ts_outlier"          # ts implausibly far from its neighbours (bit flip)
LATE = "late"                      # arrived after its minute was final

PARSE_REASONS = (MALFORMED_JSON, MISSING_UID, MISSING_TS, BAD_UID, BAD_TS)
ALL_REASONS = PARSE_REASONS + (TS_OUTLIER, LATE)
