"""Tab completion scripts for bash, zsh and fish (C{jw completion SHELL})."""

from __future__ import annotations

from .parser import CLEAN_STATUSES, STATUSES, VERBS

#: The verbs C{jw help} takes (its own word, C{help}, is not one).
_TOPICS = " ".join(VERBS)
#: The words offered as the verb: C{help} too (it was offered in no shell:
#: new user round 40).
_VERBS = f"{_TOPICS} help"
_STATUSES = " ".join(STATUSES)
#: What C{jw clean --status} takes: ended jobs' statuses only.
_ENDED = " ".join(CLEAN_STATUSES)
_GLOBAL = "--server --ca --cert --key --help"
#: The stop signals (jobworker.jobs.stopping.STOP_SIGNALS: a test checks;
#: not imported, jw starts without the server's modules).
_SIGNALS = "TERM INT HUP QUIT USR1 USR2 ALRM KILL"
#: Options whose value is a number, a size or a name: nothing to offer (job
#: ids were offered: new user round 29).
_VALUES = (
    "-n|-l|-e|--name|--priority|--label|--env|--partition|--account|--qos|--gres|"
    "--constraint|--nodes|--ntasks|--timeout|--memory|--cpu|--pids|--io-read|"
    "--io-write|--owner|--limit|--cursor|--offset|--tail|--grace|--older-than"
)
#: Every option that takes a value (the next word): that word is neither
#: the verb nor C{jw exec}'s COMMAND.
_TAKES = (
    "--server|--ca|--cert|--key|--cwd|--after|--after-ok|--status|--signal|-s|"
    + _VALUES
)
#: Options per verb (a test checks them against the parser).
OPTIONS = {
    "exec": "--follow --stdin --detach-on-interrupt --name --after --after-ok "
    "--priority --label --env --cwd --partition --account --qos --gres "
    "--constraint --nodes --ntasks --exclusive "
    "--timeout --memory --cpu --pids --io-read --io-write --json",
    "list": "--status --owner --name --label --limit --all --cursor --wide --json",
    "status": "--json",
    "logs": "--follow --stdout --stderr --offset --tail",
    "wait": "--timeout --json",
    "stop": "--signal --grace --kill --json",
    "rm": "",
    "clean": "--status --owner --older-than --json",
    "drain": "--wait --status --end --json",
    "completion": "",
    # (They take only the connection's options: they offered none, new
    # user round 35.)
    "login": "",
    "logout": "",
    "config": "",
}
#: Options that take no value for a verb, though another verb's of that
#: name takes one (C{jw drain --status}; C{jw list --status STATUS}).
_BARE = {"drain": ("--status",)}
#: The verbs whose word is a job id. Each script tells C{jw _ids} the verb
#: (C{JW_IDS_VERB}): it offers the ids that verb can use (every user's
#: newest 200 were offered for any verb: new user round 40).
_ID_VERBS = "status|logs|wait|stop|rm"
_CASES = "\n".join(
    f'        {verb}) opts="{options} {_GLOBAL}" ;;'
    for verb, options in OPTIONS.items()
)

BASH = f"""# jw completion for bash: source <(jw completion bash)
_jw() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local verb="" i w words=() given=() command=""
    # bash splits the line at : and = too (COMP_WORDBREAKS): the words
    # before the one completed, put together again (https://h:1, --ca=F).
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        while ((i + 1 < COMP_CWORD)) &&
            [[ ${{COMP_WORDS[i+1]}} == [:=] || $w == *[:=] ]]; do
            ((i++)); w+=${{COMP_WORDS[i]}}
        done
        words+=("$w")
    done
    for ((i = 0; i < ${{#words[@]}}; i++)); do
        case "${{words[i]}}" in
            --) # after --: the job's command and its files
                COMPREPLY=($(compgen -c -f -- "$cur")); return ;;
            --server|--ca|--cert|--key)
                # (the ids are those of this server, as this line reaches it)
                w=${{words[i+1]}}
                [[ $w == "~/"* ]] && w=$HOME/${{w:2}}
                ((i + 1 < ${{#words[@]}})) && given+=("${{words[i]}}" "$w")
                ((i++)) ;;
            --server=*|--ca=*|--cert=*|--key=*) given+=("${{words[i]}}") ;;
            {_TAKES}) ((i++)) ;;  # (its value: not the verb, nor the command)
            -*) ;;
            *)
                if [ -z "$verb" ]; then
                    verb=${{words[i]}}
                elif [ "$verb" = exec ]; then
                    command=${{words[i]}}; break  # what follows is the job's
                elif [ "$verb" = help ]; then
                    return  # (jw help VERB: nothing follows)
                fi ;;
        esac
    done
    if [ -n "$command" ]; then
        # The job's words, after its COMMAND (jw's flags were offered)
        COMPREPLY=($(compgen -f -- "$cur")); return
    fi
    case "$prev" in
        --status)
            # (jw drain --status takes none: on to its options)
            if [ "$verb" != drain ]; then
                local statuses="{_STATUSES}"
                [ "$verb" = clean ] && statuses="{_ENDED}"
                COMPREPLY=($(compgen -W "$statuses" -- "${{cur^^}}")); return
            fi ;;
        --ca|--cert|--key|--cwd) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        # (A URL: verbs, or the ids of a server, were offered: new user
        # round 35.)
        --server) return ;;
        --signal|-s) COMPREPLY=($(compgen -W "{_SIGNALS}" -- "${{cur^^}}")); return ;;
        --after|--after-ok)
            COMPREPLY=($(compgen -W "$(JW_IDS_VERB=$verb \\
                jw _ids "${{given[@]}}" 2>/dev/null)" -- "$cur")); return ;;
        {_VALUES}) return ;;
    esac
    if [ -z "$verb" ]; then
        COMPREPLY=($(compgen -W "{_VERBS} {_GLOBAL} --version --quiet" -- "$cur"))
        return
    fi
    local opts=""
    case "$verb" in
{_CASES}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [ "$verb" = exec ]; then  # the job's COMMAND
        COMPREPLY=($(compgen -c -f -- "$cur"))
    elif [ "$verb" = completion ]; then
        COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur"))
    elif [ "$verb" = help ]; then  # jw help VERB
        COMPREPLY=($(compgen -W "{_TOPICS}" -- "$cur"))
    elif [[ "$verb" =~ ^({_ID_VERBS})$ ]]; then
        COMPREPLY=($(compgen -W "$(JW_IDS_VERB=$verb \\
            jw _ids "${{given[@]}}" 2>/dev/null)" -- "$cur"))
    fi
}}
complete -F _jw jw
"""

ZSH = f"""#compdef jw
# jw completion for zsh: source <(jw completion zsh)
_jw() {{
    local -a words_after given
    local verb="" i w
    local dashes=${{words[(i)--]}}
    if (( dashes < CURRENT )); then
        # after --: the job's command, then its files
        if (( dashes + 1 == CURRENT )); then _command_names -e; else _files; fi
        return
    fi
    for ((i = 2; i < CURRENT; i++)); do
        case "$words[i]" in
            --server|--ca|--cert|--key)
                # (the ids are those of this server, as this line reaches it)
                w=${{words[i+1]}}
                [[ $w == "~/"* ]] && w=$HOME/${{w:2}}
                (( i + 1 < CURRENT )) && given+=("$words[i]" "$w")
                ((i++)) ;;
            --server=*|--ca=*|--cert=*|--key=*) given+=("$words[i]") ;;
            {_TAKES}) ((i++)) ;;  # (its value: not the verb, nor the command)
            -*) ;;
            *)
                if [[ -z $verb ]]; then
                    verb=$words[i]
                elif [[ $verb == exec ]]; then
                    _files; return  # after the job's COMMAND: its words
                elif [[ $verb == help ]]; then
                    return  # (jw help VERB: nothing follows)
                fi ;;
        esac
    done
    case "$words[CURRENT-1]" in
        --signal|-s) compadd -- {_SIGNALS}; return ;;
        --after|--after-ok)
            compadd -- $(JW_IDS_VERB=$verb jw _ids $given 2>/dev/null); return ;;
        --ca|--cert|--key|--cwd) _files; return ;;
        --server|{_VALUES}) return ;;
    esac
    if [[ "$words[CURRENT-1]" == --status && $verb != drain ]]; then
        if [[ $verb == clean ]]; then
            compadd -- {_ENDED}
        else
            compadd -- {_STATUSES}
        fi
        return
    fi
    if [[ -z $verb ]]; then
        compadd -- {_VERBS}; return
    fi
    case "$verb" in
        {_ID_VERBS}) [[ "$PREFIX" == -* ]] ||
            compadd -- $(JW_IDS_VERB=$verb jw _ids $given 2>/dev/null) ;;
        completion) compadd -- bash zsh fish ;;
        help) [[ "$PREFIX" == -* ]] || compadd -- {_TOPICS} ;;
        exec) [[ "$PREFIX" == -* ]] || {{ _command_names -e; return }} ;;
    esac
    case "$verb" in
{chr(10).join(f"        {v}) compadd -- {o} {_GLOBAL} ;;" for v, o in OPTIONS.items())}
    esac
}}
compdef _jw jw
"""

#: The options that take a file as their value (the other values: none).
_FILES = ("--ca", "--cert", "--key", "--cwd")


def _fishOptions(verb: str, options: str) -> list[str]:
    """
    The fish C{complete} lines of C{verb}'s C{options}: those that take no
    value, those whose value is a file (-r -F), and those whose value jw
    has nothing to offer for (-x: job ids were offered as C{--tail}'s).
    Those with values of their own (statuses, signals, ids) have lines
    of their own.
    """
    own = ("--status", "--signal", "--after", "--after-ok")
    takes = _TAKES.split("|")
    bare = _BARE.get(verb, ())
    kinds: dict[str, list[str]] = {"": [], " -r -F": [], " -x": []}
    for option in options.split():
        if option in own and option not in bare:
            continue
        if option in _FILES:
            kind = " -r -F"
        elif option in takes and option not in bare:
            kind = " -x"
        else:
            kind = ""
        kinds[kind].append(f"-l {option[2:]}")
    return [
        f'complete -c jw -n "__jw_subcommand_from {verb}" {" ".join(flags)}{kind}'
        for kind, flags in kinds.items()
        if flags
    ]


FISH = f"""# jw completion for fish: jw completion fish | source
# jw's verb on the line ("none": not yet), or "JOB" once the words are the
# job's: after --, or after jw exec's COMMAND (its "status" is no verb);
# "HELPED" after jw help's VERB.
function __jw_verb
    set -l words (commandline -opc)
    set -l verb none
    set -l i 2
    while test $i -le (count $words)
        set -l w $words[$i]
        if test "$w" = --
            echo JOB; return
        else if contains -- $w {_TAKES.replace("|", " ")}
            set i (math $i + 1)  # (its value: not the verb, nor the command)
        else if not string match -q -- '-*' $w
            if test $verb = none
                set verb $w
            else if test $verb = exec
                echo JOB; return
            else if test $verb = help
                set verb HELPED
            end
        end
        set i (math $i + 1)
    end
    echo $verb
end
function __jw_subcommand_from
    contains -- (__jw_verb) $argv
end
# The job's command line so far (its COMMAND on), and the word completed.
function __jw_job
    set -l words (commandline -opc)
    set -l verb none
    set -l i 2
    while test $i -le (count $words)
        set -l w $words[$i]
        if test "$w" = --
            set i (math $i + 1); break
        else if contains -- $w {_TAKES.replace("|", " ")}
            set i (math $i + 1)
        else if not string match -q -- '-*' $w
            if test $verb = none
                set verb $w
            else
                break
            end
        end
        set i (math $i + 1)
    end
    if test $i -le (count $words)
        printf '%s\n' $words[$i..-1]
    end
    commandline -ct
end
# Is the word completed jw exec's COMMAND (not an option)?
function __jw_command
    __jw_subcommand_from exec; and not string match -q -- '-*' (commandline -ct)
end
# The ids of the server this line reaches (its --server, --ca, --cert, --key).
function __jw_ids
    set -l words (commandline -opc)
    set -l given
    set -l i 2
    while test $i -le (count $words)
        switch $words[$i]
            case --server --ca --cert --key
                if test $i -lt (count $words)
                    set -l value $words[(math $i + 1)]
                    set -a given $words[$i] (string replace -r '^~/' "$HOME/" -- $value)
                end
                set i (math $i + 1)
            case '--server=*' '--ca=*' '--cert=*' '--key=*'
                set -a given $words[$i]
        end
        set i (math $i + 1)
    end
    # (The verb, for the ids it can use: new user round 40.)
    set -lx JW_IDS_VERB (__jw_verb)
    jw _ids $given 2>/dev/null
end
complete -c jw -f
complete -c jw -n "__jw_subcommand_from none" -a "{_VERBS}"
complete -c jw -n "__jw_subcommand_from help" -a "{_TOPICS}"
# Where bash offers them (none after jw help, as none after exec's COMMAND;
# fish offered no --help at all: new user round 40).
complete -c jw -n "not __jw_subcommand_from JOB help HELPED" -l server -x
complete -c jw -n "not __jw_subcommand_from JOB help HELPED" -l ca -l cert -l key -r -F
complete -c jw -n "not __jw_subcommand_from JOB help HELPED" -l help
complete -c jw -n "__jw_subcommand_from none" -l version
complete -c jw -n "__jw_subcommand_from none" -s q -l quiet
complete -c jw -n "__jw_subcommand_from list" -l status -x -a "{_STATUSES}"
complete -c jw -n "__jw_subcommand_from clean" -l status -x -a "{_ENDED}"
complete -c jw -n "__jw_subcommand_from {_ID_VERBS.replace("|", " ")}" -x \\
    -a "(__jw_ids)"
complete -c jw -n "__jw_subcommand_from completion" -x -a "bash zsh fish"
complete -c jw -n "__jw_subcommand_from stop" -s s -l signal -x -a "{_SIGNALS}"
complete -c jw -n "__jw_subcommand_from exec" -l after -l after-ok -x -a "(__jw_ids)"
complete -c jw -n "__jw_subcommand_from exec" -s n -s l -s e -x
# The job's command, then its words (as the command completes them).
complete -c jw -n "__jw_subcommand_from JOB; or __jw_command" -x \\
    -a "(__fish_complete_subcommand --commandline (__jw_job))"
{chr(10).join(line for v, o in OPTIONS.items() for line in _fishOptions(v, o))}
"""

COMPLETION = {"bash": BASH, "zsh": ZSH, "fish": FISH}
