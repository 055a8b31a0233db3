"""How many examples a property test runs: the full count in `./tests/run` (CI), a tenth of it in
`./tests/run unit` (ENDPOINTD_TESTS_QUICK=1), the tier a developer runs in seconds while editing."""

import os

QUICK = os.environ.get("ENDPOINTD_TESTS_QUICK") == "1"


def examples(full: int) -> int:
    return max(5, full // 10) if QUICK else full
