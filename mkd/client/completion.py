"""`mkd completion bash|zsh`: a completion script generated from the parser itself.

So a new verb or flag completes without anyone editing a script. Job names complete from the
store (`mkd completion jobs` prints them: the live ones and the latest finished ones).
"""

from __future__ import annotations

import argparse

from mkd.layout import Layout
from mkd.store import Store
from mkd.store_views import status_rows

JOB_METAVARS = ("JOB",)
FILE_METAVARS = ("FILE", "LOGFILE", "FILE.png")


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings if o.startswith("--")
    )


def _positional_kind(parser: argparse.ArgumentParser) -> str:
    for action in parser._actions:
        if action.option_strings:
            continue
        if action.metavar in JOB_METAVARS:
            return "job"
        if action.metavar in FILE_METAVARS:
            return "file"
        if action.choices:
            return "words:" + " ".join(str(c) for c in action.choices)
    return ""


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table = commands(parser)
    names = " ".join(sorted(table))
    cases = []
    for name, sub in sorted(table.items()):
        kind = _positional_kind(sub)
        words = " ".join(_flags(sub))
        if kind == "job":
            extra = "$(mkd completion jobs 2>/dev/null)"
        elif kind.startswith("words:"):
            extra = kind[len("words:") :]
        else:
            extra = ""
        files = "1" if kind == "file" else "0"
        cases.append(f'        {name}) words="{words} {extra}"; files={files} ;;')
    body = "\n".join(cases)
    bash = f"""# mkd completion for bash: eval "$(mkd completion bash)" (or save it in bash_completion.d)
_mkd() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} cmd="" i words="" files=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            --config) ((i++)) ;;
            -*) ;;
            *) cmd=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "{names} --config --version --help" -- "$cur"))
        return
    fi
    case $cmd in
{body}
    esac
    COMPREPLY=($(compgen -W "$words --help" -- "$cur"))
    if [[ $files == 1 ]]; then
        COMPREPLY+=($(compgen -f -- "$cur"))
    fi
}}
complete -o default -F _mkd mkd
"""
    if shell == "bash":
        return bash
    return (
        '# mkd completion for zsh: eval "$(mkd completion zsh)"\nautoload -U +X bashcompinit && bashcompinit\n' + bash
    )


def job_names(layout: Layout) -> list[str]:
    if not layout.db.exists():
        return []
    store = Store.open(layout.db, readonly=True)
    try:
        return [str(row["job_id"]) for row in status_rows(store, 50)]
    finally:
        store.close()
