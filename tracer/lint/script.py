"""Parse a pasted shell script into steps: what to run in the replay namespace, and what not to.

A step is one simple command. Lines are read as people paste them: comments,
blank lines, a `sudo ` or `$ ` prefix, backslash continuations, `a && b` and
`a; b`. Only the tools that configure routing and filtering run (ip, route,
iptables, nft, sysctl, …), never through a shell; `echo … >> /etc/iproute2/…`
and `echo … > /proc/sys/net/…` become writes to the namespace's own copies.
Everything else is "not checked", with the reason.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

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
    for lineno, line in logical_lines(text):
        steps.extend(_parse_line(lineno, line))
    return steps


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
