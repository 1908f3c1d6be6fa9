#!/usr/bin/env python3
"""Prints the definitions of the named functions from sql/*.sql as CREATE OR REPLACE FUNCTION,
for an upgrade script (sql/upgrades/): the body as a fresh install has it, the owner and grants
as the installed function already has them. Usage: scripts/function-definition.py _eval_candidate ..."""
import pathlib
import re
import sys

sources = sorted(pathlib.Path(__file__).resolve().parent.parent.glob("sql/*.sql"))
for name in sys.argv[1:]:
    found = False
    for path in sources:
        text = path.read_text()
        match = re.search(r"^create function bulkhead\." + re.escape(name) + r"\(.*?^\$\$;\n", text, re.S | re.M)
        if match:
            print(match.group(0).replace("create function", "create or replace function", 1))
            found = True
            break
    if not found:
        sys.exit(f"no function bulkhead.{name} in sql/*.sql")
