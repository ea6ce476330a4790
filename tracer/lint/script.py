"""Parse a pasted shell script into steps: what to run in the replay namespace, and what not to.

A step is one simple command, or one shell block (`if … fi`, `for`/`while`/
`until … done`, `case … esac`). Lines are read as people paste them: comments,
blank lines, a `sudo ` or `$ ` prefix, backslash continuations, `a && b` and
`a; b`. Only the tools that configure routing and filtering run (ip, route,
iptables, nft, sysctl, …), never through a shell; `echo … >> /etc/iproute2/…`
and `echo … > /proc/sys/net/…` become writes to the namespace's own copies.
A block runs as one step through `bash -c` in the namespace, and only when
every command in it is one of those tools or a harmless one (grep, test, …).
Everything else is "not checked", with the reason.

`syntax_error(text)` is what `bash -n` says of the whole script;
`destruction(step, state)` what a step destroys (a link, a ruleset, …).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import PurePosixPath

from tracer.vocab import AF_INET, AF_INET6

# Tools run as they are inside the namespace: they only see its kernel objects.
CHECKED = {
    "ip", "route", "ifconfig", "arp", "tc", "bridge", "nft", "sysctl", "conntrack",
    "iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy",
    "iptables-restore", "ip6tables-restore", "iptables-nft-restore", "ip6tables-nft-restore",
    "iptables-legacy-restore", "ip6tables-legacy-restore", "iptables-save", "ip6tables-save",
    "iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save",
}
_NOT_CHECKED = {
    **dict.fromkeys(("systemctl", "service", "rc-service", "update-rc.d", "chkconfig"),
                    "manages services of the host"),
    **dict.fromkeys(("reboot", "shutdown", "halt", "poweroff", "init"), "restarts or stops the host"),
    **dict.fromkeys(("modprobe", "insmod", "rmmod", "depmod"), "loads kernel modules, which are not per namespace"),
    **dict.fromkeys(("nmcli", "nmtui", "netplan", "networkctl", "resolvectl", "ifup", "ifdown", "ifquery",
                     "dhclient", "dhcpcd", "udhcpc", "pppd", "pon", "poff", "wg-quick", "wpa_supplicant",
                     "uci", "ubus", "/etc/init.d/network", "xl2tpd", "openvpn"),
                    "drives a network manager or daemon of the host"),
    **dict.fromkeys(("kill", "pkill", "killall"), "signals processes of the host"),
    **dict.fromkeys(("ping", "ping6", "traceroute", "tracepath", "mtr", "curl", "wget", "tcpdump", "nc", "dig",
                     "host", "nslookup"), "needs real traffic; ask `why-route SRC DST` instead"),
    **dict.fromkeys(("ethtool", "iw", "iwconfig"), "talks to real hardware, which the replay does not have"),
    **dict.fromkeys(("cd", "export", "source", ".", "set", "unset", "alias"), "changes only the shell"),
    **dict.fromkeys(("cat", "less", "more", "grep", "head", "tail", "ls", "watch", "sleep", "true", "false"),
                    "does not change the network configuration"),
    **dict.fromkeys(("vi", "vim", "nano", "emacs", "ed", "sed", "cp", "mv", "rm", "chmod", "chown", "ln",
                     "mkdir", "touch"), "edits files of the host"),
    **dict.fromkeys(("apt", "apt-get", "yum", "dnf", "pacman", "opkg", "pip", "zypper", "apk"),
                    "installs software on the host"),
    **dict.fromkeys(("nsenter", "unshare", "chroot", "sh", "bash", "su", "xargs", "env"), "runs other commands"),
}
_SHELL_EXPANSION = re.compile(r"\$[\w{(]|`")
_DISCARDED_OUTPUT = re.compile(r"(?<!\S)(?:[12]?>>?|&>)\s*/dev/null|(?<!\S)2>&1")
# Files the replay maps into the namespace: its own iproute2 directory and its own /proc/sys/net.
IPROUTE2_DIR = PurePosixPath("/etc/iproute2")
PROC_SYS_NET = PurePosixPath("/proc/sys/net")


@dataclass(frozen=True)
class Step:
    lineno: int
    text: str  # the line as written, continuations joined
    argv: tuple[str, ...] = ()  # what runs in the namespace (sudo stripped)
    stdin: str | None = None
    write: tuple[str, str, str] | None = None  # (path as written, "a"|"w", content) for mapped files
    skip: str | None = None  # why this is not checked
    after_and: bool = False  # runs only if the command before it on the line succeeded (`a && b`)
    block: str | None = None  # a shell block (if … fi, for … done, …), run as one step with bash -c
    last_line: int = 0  # the block's last line (0: the step is on one line)

    @property
    def end(self) -> int:
        return max(self.lineno, self.last_line)

    @property
    def tool(self) -> str:
        return PurePosixPath(self.argv[0]).name if self.argv else ""


def logical_lines(text: str):
    """(first line number, text) for each non-blank, non-comment line, continuations joined."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        line = " ".join(part.strip() for part in pending).strip()
        pending = []
        if line.startswith("$ "):
            line = line[2:].strip()
        if line and not line.startswith("#"):
            yield start, line
    if pending:
        line = " ".join(part.strip() for part in pending).strip()
        if line and not line.startswith("#"):
            yield start, line


def parse(text: str) -> list[Step]:
    steps: list[Step] = []
    block: list[tuple[int, str]] = []
    depth = 0
    for lineno, line in logical_lines(text):
        opens, change = _block_keywords(line)
        if block or opens:
            block.append((lineno, line))
            depth += change
            if depth <= 0:
                steps.append(_parse_block(block))
                block, depth = [], 0
            continue
        steps.extend(_parse_line(lineno, line))
    if block:  # never closed: bash -n says so (syntax_error); nothing of it runs
        steps.append(_parse_block(block, unclosed=True))
    return steps


# --- shell blocks --------------------------------------------------------------

_OPENERS = {"if": "fi", "for": "done", "while": "done", "until": "done", "select": "done", "case": "esac"}
_CLOSERS = {"fi", "done", "esac"}
_RESERVED = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "esac"}
_COMMAND_START = {";", "&&", "||", "|", "&", "then", "do", "else", "elif", "{", "(", ")", ";;", "!", "if",
                  "while", "until"}
# Commands that change nothing and read nothing but their input: allowed inside a block.
_HARMLESS = {"echo", "printf", "test", "[", "[[", "]]", "true", "false", ":", "grep", "egrep", "fgrep", "head",
             "tail", "wc", "sort", "uniq", "cut", "tr", "cat", "exit", "break", "continue", "read"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)[^}]*\}|(\w+|[?#]))")


def _block_tokens(line: str) -> list[str]:
    lexer = shlex.shlex(_DISCARDED_OUTPUT.sub(" ", line), posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _block_keywords(line: str) -> tuple[int, int]:
    """(openers, openers - closers) among the words of `line` in command position."""
    try:
        tokens = _block_tokens(line)
    except ValueError:
        return 0, 0
    opens = change = 0
    for i, token in enumerate(tokens):
        if i and tokens[i - 1] not in _COMMAND_START:
            continue
        if token in _OPENERS:
            opens += 1
            change += 1
        elif token in _CLOSERS:
            change -= 1
    return opens, change


def _parse_block(lines: list[tuple[int, str]], *, unclosed: bool = False) -> Step:
    lineno, last = lines[0][0], lines[-1][0]
    text = "\n".join(line for _, line in lines)
    if unclosed:
        first = lines[0][1].split()[0]
        return Step(lineno, text, skip=f"`{first}` is never closed (no `{_OPENERS.get(first, 'end')}`)",
                    last_line=last)
    # sudo is dropped as on a line of its own: the namespace's shell runs as root, and may have no sudo.
    return Step(lineno, text, block=_strip_sudo_words(text), skip=_block_refusal([line for _, line in lines]),
                last_line=last)


def _block_refusal(lines: list[str]) -> str | None:
    """Why a block must not run in the namespace, or None: each of its commands must be one lint runs."""
    tokens: list[str] = []
    for line in lines:
        if "$(" in line or "`" in line:
            return "uses command substitution inside a block, which lint does not run"
        try:
            tokens += [*_block_tokens(_strip_sudo_words(line)), "\n"]
        except ValueError as exc:
            return f"cannot be parsed as shell ({exc})"
    if any(t in ("&", "<<", "<<<", "(", "&>") for t in tokens):
        return "uses background jobs, subshells or here-documents inside a block"
    known: dict[str, list[str]] = {}
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in (";", "&&", "||", "|", ";;", "\n"):
            commands.append([])
        else:
            commands[-1].append(token)
    in_case = False
    for words in commands:
        while words and words[0] in _RESERVED:
            in_case = in_case and words[0] != "esac"
            words = words[1:]
        words = _strip_sudo(words)
        if not words:
            continue
        if words[0] in ("for", "select"):
            if len(words) < 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[1]):
                return "uses a `for` loop lint cannot read"
            values = words[3:] if words[2:3] == ["in"] else []
            if any("$" in v for v in values):
                return "loops over shell variables whose values only a shell knows"
            known[words[1]] = values
            continue
        if words[0] == "case":
            in_case = True
            continue
        if in_case and ")" in words:
            words = words[words.index(")") + 1:]
            if not words:
                continue
        while words and re.match(r"[A-Za-z_]\w*=", words[0]):
            name, value = words[0].split("=", 1)
            if "$" in value:
                return "sets shell variables from other variables, whose values only a shell knows"
            known[name] = [value]
            words = words[1:]
        if not words:
            continue
        refusal = _block_command_refusal(words, known)
        if refusal:
            return refusal
    return None


def _block_command_refusal(words: list[str], known: dict[str, list[str]]) -> str | None:
    for op in (">", ">>"):
        while op in words:
            at = words.index(op)
            target = words[at + 1] if at + 1 < len(words) else ""
            path = PurePosixPath(target)
            if not (target == "/dev/null" or path.is_relative_to(IPROUTE2_DIR) or path.is_relative_to(PROC_SYS_NET)):
                return f"writes {target or 'a file'} on the host"
            words = words[:at] + words[at + 2:]
    if "<" in words:
        at = words.index("<")
        if "$" in "".join(words[at + 1:at + 2]):
            return "reads a file named by a shell variable"
        words = words[:at] + words[at + 2:]
    name = PurePosixPath(words[0]).name
    if "$" in words[0]:
        return "runs a command named by a shell variable"
    if name in _HARMLESS:
        return None
    if name not in CHECKED:
        reason = _NOT_CHECKED.get(name)
        return f"`{name}` {reason}" if reason else f"`{words[0]}` is not a command why-route checks"
    unknown = sorted({m.group(1) or m.group(2) for w in words for m in _VARIABLE.finditer(w)} - set(known) - {"?", "#"})
    if unknown:
        return f"${unknown[0]} is a shell variable whose value only a shell knows"
    variants = [words]
    for name_, values in known.items():
        if any(f"${name_}" in w or f"${{{name_}}}" in w for w in words):
            variants = [[w.replace(f"${{{name_}}}", v).replace(f"${name_}", v) for w in variant]
                        for variant in variants for v in (values or [""])]
    for variant in variants:
        refusal = _refusal(name, variant[1:])
        if refusal:
            return f"{shlex.join(variant)}: {refusal}"
    return None


def _strip_sudo_words(line: str) -> str:
    return re.sub(r"(?<![\w-])sudo(?:\s+-\S+)*\s+", "", line)


# --- bash -n ---------------------------------------------------------------------

@dataclass(frozen=True)
class SyntaxProblem:
    lineno: int  # where the problem starts (the opening quote or keyword), as the user reads it
    text: str  # that line
    message: str  # bash's own words
    why: str
    fix: str | None = None


def syntax_error(text: str) -> SyntaxProblem | None:
    """What `bash -n` says of the script, or None when bash accepts it (or is not installed)."""
    bash = shutil.which("bash")
    if bash is None:
        return None
    try:
        result = subprocess.run([bash, "-n", "/dev/stdin"], input=text, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode == 0:
        return None
    message = "\n".join(line.replace("/dev/stdin: ", "bash: ", 1) for line in result.stderr.strip().splitlines())
    found = re.search(r"line (\d+):", message)
    reported = int(found.group(1)) if found else 1
    physical = text.splitlines()
    quote = _open_quote(text)
    if "matching" in message and quote:
        lineno, char = quote
        line = physical[lineno - 1]
        kind = {"'": "single quote", '"': "double quote", "`": "backquote"}.get(char, "quote")
        why = (f"the {kind} ({char}) opened on line {lineno} is never closed: bash takes the rest of the script as "
               f"part of one string, then refuses the script (`bash -n`); nothing from line {lineno} on runs")
        return SyntaxProblem(lineno, line, message, why, line.rstrip() + char)
    unclosed = next((s for s in parse(text) if s.skip and s.last_line and "never closed" in s.skip), None)
    if "unexpected end of file" in message and unclosed:
        first = unclosed.text.split()[0]
        return SyntaxProblem(unclosed.lineno, unclosed.text.splitlines()[0], message,
                             f"`{first}` on line {unclosed.lineno} has no `{_OPENERS.get(first, 'end')}`: bash "
                             "refuses the script (`bash -n`); nothing from this line on runs")
    line = physical[reported - 1] if 0 < reported <= len(physical) else ""
    return SyntaxProblem(reported, line, message,
                         f"bash cannot parse line {reported} and refuses the script (`bash -n`); "
                         "nothing from this line on runs")


def _open_quote(text: str) -> tuple[int, str] | None:
    """(line, quote character) of a quote that is never closed, reading as the shell does."""
    lineno, opened, quote = 1, 0, None
    i, word_start = 0, True
    while i < len(text):
        c = text[i]
        if c == "\n":
            lineno += 1
        if quote:
            if c == "\\" and quote == '"':
                i += 1
                if i < len(text) and text[i] == "\n":
                    lineno += 1
            elif c == quote:
                quote = None
        elif c == "\\":
            i += 1
            if i < len(text) and text[i] == "\n":
                lineno += 1
        elif c == "#" and word_start:
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c in "'\"`":
            quote, opened = c, lineno
        word_start = c in " \t\n;&|()"
        i += 1
    return (opened, quote) if quote else None


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(_DISCARDED_OUTPUT.sub(" ", line), posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _parse_line(lineno: int, line: str) -> list[Step]:
    def skipped(reason: str) -> list[Step]:
        return [Step(lineno, line, skip=reason)]

    if _SHELL_EXPANSION.search(line):
        return skipped("uses shell variables or command substitution, which only a shell can expand")
    try:
        tokens = _tokens(line)
    except ValueError as exc:
        return skipped(f"cannot be parsed as a shell line ({exc})")
    if any(t in ("||", "&", "(", ")", "<<", ";;") for t in tokens):
        return skipped("uses shell control flow (||, &, subshells, here-documents)")
    commands: list[tuple[list[str], bool]] = [([], False)]
    for token in tokens:
        if token in (";", "&&"):
            commands.append(([], token == "&&"))
        else:
            commands[-1][0].append(token)
    return [dataclasses.replace(_parse_command(lineno, line, words), after_and=chained)
            for words, chained in commands if words]


def _strip_sudo(words: list[str]) -> list[str]:
    while words and words[0] == "sudo":
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[1:]
    return words


def _parse_command(lineno: int, line: str, words: list[str]) -> Step:
    def skipped(reason: str) -> Step:
        return Step(lineno, line, tuple(words), skip=reason)

    if "|" in words:
        return _parse_pipeline(lineno, line, words)
    words = _strip_sudo(words)
    if not words:
        return skipped("nothing to run")
    stdin = None
    redirect = None
    if "<" in words:
        at = words.index("<")
        if at + 1 >= len(words):
            return skipped("incomplete input redirection")
        try:
            with open(words[at + 1]) as fh:  # reading a file of the host is harmless
                stdin = fh.read()
        except OSError as exc:
            return skipped(f"cannot read {words[at + 1]}: {exc.strerror}")
        words = words[:at] + words[at + 2:]
    for op in (">>", ">"):
        if op in words:
            at = words.index(op)
            if at + 1 >= len(words):
                return skipped("incomplete output redirection")
            redirect = (words[at + 1], "a" if op == ">>" else "w")
            words = words[:at] + words[at + 2:]
            break
    if "=" in words[0] and not words[0].startswith("-"):
        return skipped("sets shell variables")
    name = PurePosixPath(words[0]).name
    if redirect:
        if name in ("echo", "printf"):
            return _file_write(lineno, line, redirect, _echo_text(words))
        return skipped(f"writes its output to {redirect[0]} on the host")
    if name in ("echo", "printf"):
        return skipped("only prints text")
    if name in CHECKED:
        refusal = _refusal(name, words[1:])
        if refusal:
            return skipped(refusal)
        return Step(lineno, line, tuple(words), stdin=stdin)
    if name in _NOT_CHECKED:
        return skipped(f"`{name}` {_NOT_CHECKED[name]}")
    return skipped(f"`{words[0]}` is not a command why-route checks (text pasted along with the commands?)")


def _parse_pipeline(lineno: int, line: str, words: list[str]) -> Step:
    """Only `echo … | [sudo] tee [-a] FILE` is understood: the common way to write rt_tables with sudo."""
    at = words.index("|")
    left_words, right_words = _strip_sudo(words[:at]), _strip_sudo(words[at + 1:])
    if left_words and PurePosixPath(left_words[0]).name in ("echo", "printf") and right_words \
            and right_words[0] == "tee" and "|" not in right_words:
        options = [w for w in right_words[1:] if w.startswith("-")]
        files = [w for w in right_words[1:] if not w.startswith("-")]
        if len(files) == 1:
            mode = "a" if any(o in ("-a", "--append") for o in options) else "w"
            return _file_write(lineno, line, (files[0], mode), _echo_text(left_words))
    return Step(lineno, line, tuple(words), skip="a pipeline; only `echo … | tee [-a] /etc/iproute2/…` is checked")


def _echo_text(words: list[str]) -> str:
    name = PurePosixPath(words[0]).name
    args = words[1:]
    if name == "printf":
        return (args[0] % tuple(args[1:]) if len(args) > 1 else args[0] if args else "") \
            .encode().decode("unicode_escape")
    newline = True
    while args and args[0] in ("-n", "-e", "-ne", "-en"):
        newline = newline and "n" not in args[0]
        args = args[1:]
    return " ".join(args) + ("\n" if newline else "")


def _file_write(lineno: int, line: str, redirect: tuple[str, str], content: str) -> Step:
    path, mode = redirect
    target = PurePosixPath(path)
    if target.is_relative_to(IPROUTE2_DIR) or target.is_relative_to(PROC_SYS_NET):
        return Step(lineno, line, write=(path, mode, content))
    return Step(lineno, line, skip=f"writes {path} on the host")


def _refusal(tool: str, args: list[str]) -> str | None:
    """Why a checked tool must not run even inside the namespace (it would reach outside it)."""
    if tool == "ip":
        options = []
        for arg in args:
            if not arg.startswith("-"):
                break
            options.append(arg)
        if "netns" in args or any(o.startswith(("-n", "--n", "-a", "--a")) for o in options):
            return "works on other network namespaces"
        if any(o.startswith(("-b", "--b")) for o in options):
            return "reads commands from a file; lint that file instead"
        rest = args[len(options):]
        if rest[:1] and "monitor".startswith(rest[0]) and len(rest[0]) >= 3:
            return "`ip monitor` runs until interrupted"
        if rest[:2] == ["vrf", "exec"]:
            return "`ip vrf exec` runs another command"
    if tool == "nft" and any(a in ("monitor", "-i", "--interactive") for a in args):
        return "runs until interrupted"
    if tool == "sysctl":
        if any(a in ("-p", "--load", "--system") or a.startswith("--load=") for a in args):
            return "loads sysctl files, which also hold settings that are not per network namespace"
        keys = [a.split("=", 1)[0].replace("/", ".") for a in args if not a.startswith("-")]
        other = [k for k in keys if not k.startswith("net.")]
        if other:
            return f"{other[0]} is not a per-namespace (net.*) setting"
    if tool == "tc" and args[:1] == ["exec"]:
        return "runs another command"
    return None


# --- destructive steps ------------------------------------------------------------

_FORWARDING_KEYS = re.compile(r"net\.ipv[46]\.(?:ip_forward|conf\.[^.]+\.forwarding)\Z")


def destruction(step: Step, state=None) -> str | None:
    """What the step destroys of a working router, in the host's terms (state: the HostState before),
    or None. Deleting a link, taking it down, flushing addresses, rules, routes or a ruleset, removing
    a default route or the main/local rule, a DROP policy, turning forwarding off."""
    if step.write:
        path, _mode, content = step.write
        key = str(PurePosixPath(path).relative_to("/proc/sys")).replace("/", ".") \
            if PurePosixPath(path).is_relative_to("/proc/sys") else ""
        if _FORWARDING_KEYS.match(key) and content.strip() == "0":
            return _forwarding_off(key)
        return None
    if step.block and not step.skip:
        inner = []
        for line in step.block.splitlines():
            line = re.sub(r"^(?:(?:if|then|else|elif|do|while|until|!|\{)\s+)+", "", line.strip())
            for sub in _parse_line(step.lineno, line):
                what = destruction(sub, state)
                if what and what not in inner:
                    inner.append(f"`{shlex.join(sub.argv) if sub.argv else sub.text}` {what}")
        return "; ".join(inner) or None
    if step.skip or not step.argv:
        return None
    tool, args = step.tool, list(step.argv[1:])
    if tool == "ip":
        return _ip_destruction(args, state)
    if tool == "ifconfig" and len(args) >= 2 and args[-1] == "down":
        return _link_down(args[0], state)
    if tool == "route" and args[:1] in (["del"], ["delete"]) and "default" in args:
        return "deletes the default route of table main" + _default_routes(state, 254)
    if tool.startswith(("iptables", "ip6tables")):
        return _iptables_destruction(tool, args, state)
    if tool == "nft":
        return _nft_destruction([a for a in args if not a.startswith("-")], state)
    if tool == "sysctl":
        for arg in args:
            key, _, value = arg.partition("=")
            key = key.replace("/", ".")
            if _FORWARDING_KEYS.match(key) and value.strip() == "0":
                return _forwarding_off(key)
    return None


def _abbrev(word: str, full: str, least: int = 1) -> bool:
    return len(word) >= least and full.startswith(word)


def _ip_destruction(args: list[str], state) -> str | None:
    words = [a for a in args if not a.startswith("-")]
    if len(words) < 2:
        return None
    obj, verb, rest = words[0], words[1], words[2:]
    if _abbrev(obj, "link"):
        names = [w for w in rest if w not in ("dev", "name")]
        if _abbrev(verb, "delete") and names:
            return _link_deleted(names[0], state)
        if _abbrev(verb, "set") and "down" in rest and names:
            return _link_down(names[0], state)
    if _abbrev(obj, "address", 1) and _abbrev(verb, "flush", 1):
        dev = next((w for w in rest if w not in ("dev", "to", "scope", "label")), None)
        return f"removes every address of {dev or 'every interface'}" + _addresses(state, dev) + \
            ", with the connected routes they give"
    if _abbrev(obj, "rule", 2) and _abbrev(verb, "flush"):
        kept = [r for r in getattr(state, "rules", ()) if r.priority != 0]
        six = "-6" in args
        family = AF_INET6 if six else AF_INET
        count = sum(1 for r in kept if r.family == family) if state is not None else None
        shown = f" ({count} rule{'s' if count != 1 else ''})" if count is not None else ""
        return (f"deletes every {'IPv6 ' if six else ''}ip rule except priority 0{shown}, the `lookup main` "
                "rule (32766) included: after it only table local is looked up")
    if _abbrev(obj, "rule", 2) and _abbrev(verb, "delete"):
        prio = next((rest[i + 1] for i, w in enumerate(rest[:-1]) if w in ("pref", "priority", "preference")), None)
        if prio in ("0", "32766"):
            return f"deletes rule {prio} (`lookup {'local' if prio == '0' else 'main'}`), which every lookup relies on"
    if _abbrev(obj, "route", 1) and _abbrev(verb, "flush"):
        if rest[:1] == ["cache"]:
            return None
        table = rest[rest.index("table") + 1] if "table" in rest and rest.index("table") + 1 < len(rest) else "main"
        return _routes_flushed(table, [w for w in rest if w not in ("table", table)], state)
    if _abbrev(obj, "route", 1) and _abbrev(verb, "delete") and rest[:1] in (["default"], ["0.0.0.0/0"]):
        table = rest[rest.index("table") + 1] if "table" in rest and rest.index("table") + 1 < len(rest) else "main"
        return f"deletes the default route of table {table}" + _default_routes(state, _table_id(state, table))
    return None


def _table_id(state, name: str) -> int | None:
    if state is None:
        return {"main": 254, "local": 255, "default": 253}.get(name, int(name) if name.isdigit() else None)
    return state.table_id(name)


def _link_deleted(name: str, state) -> str:
    routes = [r for r in getattr(state, "routes", ()) if any(nh.dev == name for nh in r.nexthops)
              and r.type == "unicast" and r.protocol != "kernel"]
    through = f" and the {len(routes)} route{'s' if len(routes) != 1 else ''} through it" if routes else \
        " and every route through it"
    return f"deletes interface {name}{_addresses(state, name)}{through}"


def _link_down(name: str, state) -> str:
    return (f"takes interface {name} down{_addresses(state, name)}: its routes stop being used and nothing is "
            "sent or received on it")


def _addresses(state, dev: str | None) -> str:
    if state is None or dev is None:
        return ""
    shown = [f"{a.local} peer {a.peer}" if a.peer else f"{a.local}/{a.prefixlen}"
             for a in state.addresses if a.ifname == dev and a.family == AF_INET]
    return f" ({', '.join(shown)})" if shown else ""


def _routes_flushed(table: str, selectors: list[str], state) -> str:
    what = f"every route of table {table}" if not selectors \
        else f"the routes of table {table} matching `{' '.join(selectors)}`"
    if table == "all":
        what = "every route of every table" if not selectors else f"every route matching `{' '.join(selectors)}`"
    table_id = None if table == "all" else _table_id(state, table)
    if state is not None and not selectors:
        routes = [r for r in state.routes if (table_id is None or r.table == table_id) and r.protocol != "kernel"]
        defaults = [r for r in routes if r.dst_len == 0 and r.gateway]
        if routes:
            what += f" ({len(routes)} route{'s' if len(routes) != 1 else ''}" + \
                (f", default via {defaults[0].gateway}" if defaults else "") + ")"
    return "deletes " + what + ("" if table not in ("main", "254", "all") else ", the connected routes included")


def _default_routes(state, table: int | None) -> str:
    if state is None or table is None:
        return ""
    gateways = [f"via {r.gateway}" if r.gateway else f"dev {r.dev}" for r in state.routes
                if r.table == table and r.dst_len == 0 and r.family == AF_INET]
    return f" ({', '.join(gateways)})" if gateways else ""


def _iptables_destruction(tool: str, args: list[str], state) -> str | None:
    if tool.endswith("-restore"):
        if any(a in ("-n", "--noflush") for a in args):
            return None
        return "replaces every table its input names: the rules in them now are deleted first (no --noflush)"
    if tool.endswith("-save"):
        return None
    table = "filter"
    for flag in ("-t", "--table"):
        if flag in args and args.index(flag) + 1 < len(args):
            table = args[args.index(flag) + 1]
    chain = None
    for flag in ("-F", "--flush", "-X", "--delete-chain", "-P", "--policy"):
        if flag in args:
            at = args.index(flag)
            chain = args[at + 1] if at + 1 < len(args) and not args[at + 1].startswith("-") else None
            if flag in ("-F", "--flush"):
                where = f"chain {chain} of table {table}" if chain else f"every chain of iptables table {table}"
                return f"deletes every rule of {where}" + _rule_count(tool, table, chain, state)
            if flag in ("-X", "--delete-chain"):
                return f"deletes {'chain ' + chain if chain else 'every user chain'} of iptables table {table}"
            policy = args[at + 2] if at + 2 < len(args) else ""
            if policy.upper() == "DROP" and chain in ("FORWARD", "INPUT", "OUTPUT", "PREROUTING", "POSTROUTING"):
                return (f"sets the policy of {chain} (table {table}) to DROP: every packet no rule accepts is "
                        "dropped")
    return None


def _rule_count(tool: str, table: str, chain: str | None, state) -> str:
    if state is None:
        return ""
    family = "ip6" if tool.startswith("ip6") else "ip"
    kind = "iptables_legacy" if "legacy" in tool else "iptables_nft"
    save = ((state.netfilter.get(kind) or {}).get(family) or {}).get("save") or ""
    current, count = None, 0
    for line in save.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        parts = line.split()
        if current == table and "-A" in parts:
            at = parts.index("-A")
            if chain is None or (at + 1 < len(parts) and parts[at + 1] == chain):
                count += 1
    return f" ({count} rule{'s' if count != 1 else ''})" if count else ""


def _nft_destruction(words: list[str], state) -> str | None:
    if words[:2] == ["flush", "ruleset"]:
        tables = [obj["table"] for obj in ((getattr(state, "netfilter", None) or {}).get("nft") or {})
                  .get("ruleset", {}).get("nftables", []) if "table" in obj] if state is not None else []
        names = ", ".join(f"{t.get('family')} {t.get('name')}" for t in tables)
        return ("deletes every nftables table" + (f" ({names})" if names else "") +
                ", iptables-nft's rules included")
    if len(words) >= 3 and words[0] in ("flush", "delete", "destroy") and words[1] in ("table", "chain"):
        name = " ".join(words[2:])
        return f"{'deletes every rule of' if words[0] == 'flush' else 'deletes'} nftables {words[1]} {name}"
    return None


def _forwarding_off(key: str) -> str:
    scope = key.split(".")[3] if ".conf." in key else "all"
    where = "this host" if scope in ("all", "default") or key.endswith("ip_forward") else f"interface {scope}"
    return f"turns forwarding off ({key} = 0): {where} stops routing packets between its interfaces"
