#!/usr/bin/env python3
"""Derives `kitt sim --mimic llama_cpp`'s flag table from `llama-server --help` on stdin.

  "$(scripts/llama-cpp.sh | sed -n 's/^LLAMA_SERVER=//p')" --help | scripts/llama-server-flags.py VERSION \
      > src/engine/sim/flags/llama-server.txt

Each output line is a flag's names and how many values it takes (0, 1 or 2); see the header the
table is written with. A line of the help that starts with `-` names a flag: its names up to the
value placeholder, which is the rest of the first column.
"""
import re
import sys

version = sys.argv[1] if len(sys.argv) > 1 else "unknown"
print(f"# llama-server's flags: `llama-server --help` of llama.cpp {version}, built by scripts/llama-cpp.sh,")
print("# derived by scripts/llama-server-flags.py. Each line: the flag's names, then how many values it takes.")
for line in sys.stdin:
    if not line.startswith("-") or line.startswith("-----"):
        continue
    spec = re.split(r"\s{2,}", re.sub(r",\s+", ", ", line.rstrip("\n")))[0]
    names, placeholder = [], ""
    for part in spec.split(", "):
        name, _, rest = part.partition(" ")
        names.append(name)
        placeholder = rest or placeholder
    # `START END` is the one placeholder of two values; `<a b>=...` is one value with spaces in it.
    values = 0 if not placeholder else 2 if re.fullmatch(r"[A-Z]+ [A-Z]+", placeholder) else 1
    print(" ".join(names), values)
