"""Print the options of every ``albert-ray`` subcommand as Markdown tables, from the parser
itself; docs/cli.md holds this output between its ``options`` markers (a test keeps them equal).

usage: python scripts/cli_reference.py > /tmp/options.md
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from albert_ray.cli import EXAMPLES, build_parser  # noqa: E402


def reference() -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    for name, command in commands.choices.items():
        out += [
            f"### `albert-ray {name}`",
            "",
            helps[name] + ".",
            "",
            f"Example: `{EXAMPLES[name]}`",
            "",
            "| option | what |",
            "|---|---|",
        ]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = (
                ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}` (positional)"
            )
            text = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|")
            out.append(f"| {flags} | {text} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
