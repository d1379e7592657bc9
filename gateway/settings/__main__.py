"""`python -m gateway.settings example|table`: regenerate the documents that list
every setting (config/gateway.example.yaml, the README's table)."""

from __future__ import annotations

import sys

from gateway.settings.describe import example_yaml, readme_table

if sys.argv[1:] not in (["example"], ["table"]):
    sys.exit("usage: python -m gateway.settings example|table")
print(example_yaml() if sys.argv[1] == "example" else readme_table(), end="")
