"""Run a command under another Debian kernel (bookworm-backports' 6.12) in a throwaway qemu guest.

This machine's kernel lacks kprobes and refuses fentry, so the tests of the probes that need them boot
Debian's 6.12 (kprobes, fentry and the BPF netfilter links of kernels >= 6.4) and run inside it. The
guest's root is the host's own `/`, exported read-only over virtio-9p with a tmpfs overlay on top: the
guest sees the project, the venv, BCC and the host's kernel headers as they are on the host and can
write anywhere, while the host stays untouched. The kernel image, its modules and a static busybox come
from Debian's packages, fetched with `apt-get download` (the kernel through a private package list of
bookworm-backports under /var/cache/why-route/apt, the host's apt sources untouched) and unpacked into
/var/cache/why-route/kernel-<ver>/ (never installed). Where /dev/kvm cannot run a stock kernel (see
kvm_problem()), qemu's TCG emulator runs it instead: seconds to boot, run `uname` and power off.

    run(["uname", "-r"]).stdout  ->  "6.12.95+deb12-amd64\\n"
    python tests/kernel_vm.py -- CMD ...

Stdlib only, so that any test (or a shell) can use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHE_ROOT = Path("/var/cache/why-route")
HEADERS_GLOB = "linux-headers-*-amd64"
# Debian's newest kernel for bookworm: kprobes, fentry, and BPF netfilter links (>= 6.4, which
# the fib probes need; Debian's 6.1 has none, so a trace there never arms them).
GUEST_SERIES = "6.12"
BACKPORTS = "deb http://deb.debian.org/debian bookworm-backports main"
QEMU = "qemu-system-x86_64"
KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)
# What the initramfs needs to mount the host's root over virtio-9p and lay an overlay on it;
# their dependencies (netfs, fscache, virtio_ring, the virtio_pci helpers...) come from modules.dep.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_RESULTS = "/run/why-route"  # where the guest mounts the per-run results export
GUEST_CPUS, GUEST_MEMORY_MB = 2, 3072
CONSOLE_TAIL = 4000  # characters of serial console quoted in a GuestError

_apt_updated = False


class GuestError(RuntimeError):
    """The guest did not report an exit code (boot failure, crash); the message ends with the console."""


class GuestTimeout(GuestError, TimeoutError):
    """The guest ran past its timeout and was killed."""


def _newest(versions: list[str]) -> str | None:
    return max(versions, key=lambda v: [int(n) for n in re.findall(r"\d+", v)], default=None)


def _backports_apt() -> list[str]:
    """apt options for a package list of bookworm-backports alone, kept under the cache."""
    root = CACHE_ROOT / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    if not sources.exists() or sources.read_text() != BACKPORTS + "\n":
        sources.write_text(BACKPORTS + "\n")
    return ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={root / 'lists'}", "-o", f"Dir::Cache={root / 'cache'}"]


def _kernel_package(version: str) -> str:
    return f"linux-image-{version}-unsigned"


@functools.cache
def kernel_version() -> str | None:
    """The guest kernel's ABI, e.g. "6.12.95+deb12-amd64": the cached one, else backports' newest."""
    pattern = re.escape(GUEST_SERIES) + r"\.\d+\+deb\d+-amd64"
    cached = [d.name.removeprefix("kernel-") for d in CACHE_ROOT.glob(f"kernel-{GUEST_SERIES}.*")
              if re.fullmatch(pattern, d.name.removeprefix("kernel-")) and (d / ".complete").exists()]
    if cached:
        return _newest(cached)
    if shutil.which("apt-get") is None:
        return None
    try:
        options = _backports_apt()
    except OSError:
        return None
    subprocess.run(["apt-get", "-q", *options, "update"], capture_output=True, check=False)
    names = subprocess.run(["apt-cache", *options, "pkgnames", f"linux-image-{GUEST_SERIES}."],
                           capture_output=True, text=True, check=False).stdout.split()
    found = [m.group(1) for n in names if (m := re.fullmatch(f"linux-image-({pattern})-unsigned", n))]
    return _newest(found)


def host_headers() -> Path | None:
    """The host's kernel headers (Debian's linux-headers-amd64), which BCC compiles against in the guest too."""
    return max(Path("/usr/src").glob(HEADERS_GLOB), default=None)


def cache_dir(version: str) -> Path:
    return CACHE_ROOT / f"kernel-{version}"


def kvm_problem() -> str | None:
    """None when KVM can run an unmodified kernel at hardware speed, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"no usable /dev/kvm: {e.strerror}"
    try:
        os.close(fcntl.ioctl(fd, KVM_CREATE_VM, 0))
    except OSError as e:
        return f"KVM_CREATE_VM refused: {e.strerror}"
    finally:
        os.close(fd)
    # A /dev/kvm without kvm_intel/kvm_amd behind it (e.g. kvm_pvm, no vmx/svm in the CPU flags)
    # accepts the VM but runs a stock kernel through its instruction emulator: minutes to boot, and
    # it dies on cmpxchg16b and xrstor. TCG boots the same kernel in seconds.
    if not any(Path("/sys/module", m).is_dir() for m in ("kvm_intel", "kvm_amd")):
        return "/dev/kvm has no hardware virtualization behind it (no kvm_intel/kvm_amd loaded)"
    return None


def accelerator() -> str:
    """The qemu accelerator to use: "kvm" where it runs a stock kernel, else "tcg" (slower, same kernel)."""
    return "tcg" if kvm_problem() else "kvm"


def available() -> str | None:
    """None when a guest can run here (with KVM or, failing that, TCG), else one line saying why not."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} missing (apt-get install qemu-system-x86)"
    if host_headers() is None:
        return f"no /usr/src/{HEADERS_GLOB} for BCC to compile against (apt-get install linux-headers-amd64)"
    if kernel_version() is None:
        return f"no Debian {GUEST_SERIES} kernel cached, and none found in bookworm-backports with apt-get"
    return None


# --- fetching and unpacking Debian's packages ------------------------------------------------


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    # Parallel test processes may all call ensure_kernel(); one fetches, the others wait.
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _apt_download(names: list[str], dest: Path, options: list[str]) -> Path:
    """Download the first of `names` that apt knows into dest (apt-get update once if none)."""
    global _apt_updated
    errors = []
    for attempt in range(2):
        for name in names:
            p = subprocess.run(["apt-get", "-q", *options, "download", name], cwd=dest,
                               capture_output=True, text=True)
            debs = sorted(dest.glob(f"{name}_*.deb"))
            if p.returncode == 0 and debs:
                return debs[-1]
            errors.append(f"{name}: {(p.stderr or p.stdout).strip()[-500:]}")
        if attempt == 0 and not _apt_updated:
            _apt_updated = True
            subprocess.run(["apt-get", "-q", *options, "update"], capture_output=True, check=False)
        else:
            break
    raise RuntimeError("apt-get download failed:\n" + "\n".join(errors))


def _unpack(names: list[str], cache: Path, target: str, finish=None, options: list[str] = ()) -> None:
    """Extract the package into cache/target via a scratch dir, renamed into place when complete."""
    final = cache / target
    if final.is_dir():
        return
    scratch = Path(tempfile.mkdtemp(prefix=f".{target}-", dir=cache))
    try:
        deb = _apt_download(names, scratch, list(options))
        tree = scratch / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        if finish:
            finish(tree)
        tree.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _payload(image: Path) -> bytes | None:
    """The compressed kernel inside a bzImage, from its setup header (payload_offset, payload_length)."""
    data = image.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        return None
    setup_sectors = data[0x1F1] or 4
    offset = int.from_bytes(data[0x248:0x24C], "little") + (setup_sectors + 1) * 512
    return data[offset:offset + int.from_bytes(data[0x24C:0x250], "little")]


def _extract_pvh(image: Path, target: Path) -> None:
    """Write the ELF vmlinux inside the bzImage to target if qemu can boot it directly (PVH).

    Booting the ELF skips SeaBIOS and the decompressor: seconds of each boot under TCG.
    """
    payload = _payload(image)
    if payload is None or not payload.startswith(b"\x28\xb5\x2f\xfd") or not shutil.which("zstd"):
        return
    # Debian's 6.12 is CONFIG_KERNEL_ZSTD; the build appends the size (4 bytes) after the frame.
    elf = subprocess.run(["zstd", "-dcq"], input=payload[:-4], capture_output=True, check=False).stdout
    # The Xen PHYS32_ENTRY note (type 18) is what qemu needs to boot an x86 ELF (CONFIG_PVH).
    if elf[:4] != b"\x7fELF" or not re.search(rb"\x04\0\0\0[\x04\x08]\0\0\0\x12\0\0\0Xen\0", elf):
        return
    scratch = target.with_suffix(".tmp")
    scratch.write_bytes(elf)
    scratch.rename(target)


def ensure_kernel() -> Path:
    """Fetch (once) the kernel, its modules and busybox into the cache; return the image to boot.

    That is the ELF vmlinux where it can be booted directly, else the package's vmlinuz.
    Nothing is installed: no dpkg database entry, nothing under /lib/modules or /boot.
    """
    version = kernel_version()
    if version is None:
        raise RuntimeError(f"no Debian {GUEST_SERIES} kernel cached or in bookworm-backports")
    cache = cache_dir(version)
    image = cache / "root" / "boot" / f"vmlinuz-{version}"
    pvh = cache / "vmlinux"
    if not (cache / ".complete").exists():
        with _locked(cache):
            if not (cache / ".complete").exists():
                _unpack(["busybox-static"], cache, "busybox")
                busybox = cache / "busybox" / "bin" / "busybox"

                def depmod(tree: Path) -> None:
                    # The package leaves modules.dep to its postinst; busybox's depmod (which reads the
                    # .ko.xz) writes it and modules.alias, for autoloading "rtnl-link-veth" and the like.
                    subprocess.run([str(busybox), "depmod", "-b", str(tree), version], check=True)

                _unpack([_kernel_package(version)], cache, "root", depmod, _backports_apt())
                # The kernel's request_module() and a `modprobe` in the guest both reach this.
                sbin = cache / "sbin"
                sbin.mkdir(exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    (sbin / "modprobe").symlink_to("../busybox/bin/busybox")
                _extract_pvh(image, pvh)
                (cache / ".complete").write_text(version + "\n")
    return pvh if pvh.exists() else image


# --- the initramfs -----------------------------------------------------------------------------

# Stage 1, /init in the initramfs: mount the host's root and switch into it. @VAR@ are filled in.
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "why-route-vm: $*"; poweroff -f; }
for m in @MODULES@; do insmod /modules/$m.ko || fail "insmod $m"; done
mkdir -p /lower /rw /newroot
# The virtio-9p channel may show up a moment after its driver loads.
i=0
until mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /lower 2>/dev/null; do
  i=$((i + 1)); [ $i -lt 100 ] || fail "cannot mount hostroot over 9p"; sleep 0.05
done
# All writes land in RAM: tmpfs upper over the read-only host root.
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/root/upper /rw/root/work /rw/mods/upper /rw/mods/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/root/upper,workdir=/rw/root/work root /newroot \
  || fail "cannot mount the overlay root"
# This kernel's modules, from the cache, where modprobe looks (writable, for build/ and depmod).
M=/lib/modules/@VER@
mkdir -p /newroot$M
mount -t overlay -o lowerdir=/lower@CACHE@/root$M,upperdir=/rw/mods/upper,workdir=/rw/mods/work mods /newroot$M \
  || fail "cannot mount the module tree"
# Where BCC looks for headers by default: the host's (why-route points BCC at them itself).
ln -sfn @HEADERS@ /newroot$M/build
echo @CACHE@/sbin/modprobe > /proc/sys/kernel/modprobe
mount -t tmpfs -o mode=0755 run /newroot/run
mkdir -p /newroot@RESULTS@
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot@RESULTS@ || fail "cannot mount results"
cp /stage2 /newroot/run/why-route-stage2
umount /proc /sys /dev
exec switch_root /newroot @CACHE@/busybox/bin/busybox sh /run/why-route-stage2
fail "switch_root failed"
"""

# Stage 2, PID 1 in the guest's root: the usual mounts, then the command, then power off.
STAGE2 = r"""BB=@CACHE@/busybox/bin/busybox
R=@RESULTS@
$BB mount -t proc proc /proc
$BB mount -t sysfs sysfs /sys
$BB mount -t devtmpfs devtmpfs /dev
$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts -o ptmxmode=0666 devpts /dev/pts
$BB mount -t tmpfs tmpfs /dev/shm
$BB mount -t debugfs debugfs /sys/kernel/debug
$BB mount -t tracefs tracefs /sys/kernel/tracing
$BB mount -t bpf bpf /sys/fs/bpf
$BB mount -t cgroup2 cgroup2 /sys/fs/cgroup
$BB ip link set lo up
# A modprobe on PATH: busybox's, unless the host has kmod's, which wants its binary indexes.
if [ -e /sbin/modprobe ]; then
  [ -e /lib/modules/@VER@/modules.dep.bin ] || /sbin/depmod -a @VER@
else
  $BB ln -s @CACHE@/sbin/modprobe /sbin/modprobe
fi
$BB env -i PATH=@PATH@ PYTHONDONTWRITEBYTECODE=1 HOME=/root LANG=C.UTF-8 \
  /bin/sh $R/command </dev/null >$R/stdout 2>$R/stderr
echo $? >$R/rc.tmp && $BB mv $R/rc.tmp $R/rc
$BB sync
$BB poweroff -f
"""


def _module_order(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for `wanted` and their dependencies (from modules.dep), in load order."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod] = rest.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", Path(m).name).replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod not in order:
            for dep in deps.get(mod, []):
                visit(dep)
            order.append(mod)

    builtin_file = moddir / "modules.builtin"
    builtin = {re.sub(r"\.ko$", "", Path(m).name).replace("-", "_")
               for m in (builtin_file.read_text().split() if builtin_file.exists() else [])}
    for name in wanted:
        if name in builtin:  # built into this kernel (virtio_pci is, in Debian's 6.12)
            continue
        if name not in by_name:
            raise RuntimeError(f"module {name} not in {moddir}/modules.dep")
        visit(by_name[name])
    return [moddir / m for m in order]


def _read_module(path: Path) -> bytes:
    # busybox insmod wants a plain ELF; Debian ships .ko.xz (CONFIG_MODULE_COMPRESS_XZ).
    return lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc archive of (name, mode, data, rdev) entries, as the kernel unpacks an initramfs."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(raw), 0)
        out.extend(b"070701" + "".join(f"{f:08X}" for f in fields).encode() + raw)
        out.extend(b"\0" * (-len(out) % 4) + data + b"\0" * (-len(data) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, 1):
        add(ino, name, mode, data, rdev)
    add(0, "TRAILER!!!", 0, b"", 0)
    return bytes(out)


def ensure_initramfs() -> Path:
    """Build (once per content) the initramfs beside the cached kernel; return its path."""
    ensure_kernel()
    version = kernel_version()
    assert version is not None
    cache = cache_dir(version)
    modules = _module_order(cache / "root" / "lib" / "modules" / version, BOOT_MODULES)
    names = [re.sub(r"\.ko(\.\w+)?$", "", m.name) for m in modules]

    def fill(text: str) -> str:
        for key, value in {"VER": version, "CACHE": str(cache), "RESULTS": GUEST_RESULTS,
                           "PATH": GUEST_PATH, "MODULES": " ".join(names),
                           "HEADERS": str(host_headers())}.items():
            text = text.replace(f"@{key}@", value)
        return text

    init, stage2 = fill(INIT), fill(STAGE2)
    # Named by content: editing the scripts above makes a new one, no stale cache to clear.
    digest = hashlib.sha256("\0".join([init, stage2, *map(str, modules)]).encode()).hexdigest()[:16]
    target = cache / f"initramfs-{digest}.cpio"
    if target.exists():
        return target
    d, f, x = 0o040755, 0o100644, 0o100755
    entries = [(n, d, b"", 0) for n in ("bin", "dev", "proc", "sys", "modules")]
    entries += [
        ("dev/console", 0o020600, b"", os.makedev(5, 1)),  # init's stdio before devtmpfs is up
        ("bin/busybox", x, (cache / "busybox" / "bin" / "busybox").read_bytes(), 0),
        ("init", x, init.encode(), 0),
        ("stage2", f, stage2.encode(), 0),
    ]
    entries += [(f"modules/{n}.ko", f, _read_module(m), 0) for n, m in zip(names, modules, strict=True)]
    with _locked(cache):
        scratch = target.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_bytes(_cpio(entries))
        scratch.rename(target)
    return target


# --- running a guest ---------------------------------------------------------------------------


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no console output)"
    # SeaBIOS clears the screen with terminal escapes; they only garble an exception message.
    return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", text)[-CONSOLE_TAIL:]


def run(
    command: list[str] | str,
    *,
    timeout: float = 300,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Boot the guest, run `command` there as root, power off; return its exit code and output.

    A list is run as argv, a string by /bin/sh. The command starts in `cwd` (default: the host's
    current directory, as the guest sees the same tree) with PATH, PYTHONDONTWRITEBYTECODE=1, HOME
    and LANG set. KVM is used where it can run a stock kernel, else TCG (accelerator()). Raises
    GuestTimeout past `timeout` seconds (boot included) and GuestError when the guest ends without
    an exit code; both quote the tail of the serial console.
    """
    kernel = ensure_kernel()
    initrd = ensure_initramfs()
    workdir = os.path.abspath(cwd if cwd is not None else os.getcwd())
    script = f"cd {shlex.quote(workdir)} || exit 125\n"
    script += f"exec {shlex.join(command)}\n" if isinstance(command, list) else command + "\n"
    if accelerator() == "kvm":
        accel_args = ["-enable-kvm", "-cpu", "host"]
    else:
        accel_args = ["-accel", "tcg,thread=multi", "-cpu", "max"]
    tmp = Path(tempfile.mkdtemp(prefix="why-route-vm-"))
    proc = None
    try:
        results = tmp / "results"
        results.mkdir()
        (results / "command").write_text(script)
        console = tmp / "console.log"
        qemu_log = tmp / "qemu.log"
        argv = [
            QEMU, *accel_args, "-smp", str(GUEST_CPUS), "-m", str(GUEST_MEMORY_MB),
            "-nographic", "-nodefaults", "-no-reboot", "-nic", "none", "-monitor", "none",
            "-serial", f"file:{console}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            # multidevs=remap: the host's / spans several filesystems; keep guest inode numbers unique.
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=passthrough",
        ]
        with open(qemu_log, "w") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestTimeout(f"guest still running after {timeout:g}s; console tail:\n{_tail(console)}") from None
        rc_file = results / "rc"
        if not rc_file.exists():
            raise GuestError(
                f"guest ended without an exit code (qemu exit {proc.returncode}: "
                f"{qemu_log.read_text(errors='replace').strip()[-500:]}); console tail:\n{_tail(console)}"
            )
        return subprocess.CompletedProcess(
            command,
            int(rc_file.read_text()),
            (results / "stdout").read_text(errors="replace"),
            (results / "stderr").read_text(errors="replace"),
        )
    finally:
        # Also on KeyboardInterrupt: no qemu or temp dir outlives the call.
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python tests/kernel_vm.py -- CMD [ARG...]   (one argument: a shell command line)")
        return 2
    reason = available()
    if reason:
        print(f"kernel_vm: cannot run a guest: {reason}", file=sys.stderr)
        return 2
    result = run(argv[0] if len(argv) == 1 else argv)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
