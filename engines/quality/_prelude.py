"""Runs inside the sandboxed interpreter before the untrusted program (passed with -c).

Stdlib only and self-contained: the sandbox passes this file's text on the command line, so
it works when the sandbox user cannot read the project's files. The parent imports it too,
for landlock_abi(). Order: limits -> Landlock -> Python-level guard -> the program.
"""

import sys

SETUP_FAILED = 121  # exit status when the sandbox itself could not be set up

# Landlock (Linux >= 5.13): the same syscall numbers on every architecture but alpha.
_CREATE, _ADD_RULE, _RESTRICT = 444, 445, 446
_WRITE_FS = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write/remove/make rights
_REFER, _TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_TCP = 1 | 2  # ABI 4: bind and connect TCP
_SCOPE = 1 | 2  # ABI 6: abstract unix sockets, signals to processes outside the sandbox


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return ctypes, libc


def landlock_abi() -> int:
    """Landlock ABI version of this kernel, 0 where there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        ctypes, libc = _libc()
        abi = libc.syscall(_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


def landlock(write_dir: str) -> int:
    """Allow writes only beneath write_dir, no TCP, no signals out; returns the ABI used."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    ctypes, libc = _libc()
    import os

    class Ruleset(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    fs = _WRITE_FS | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = Ruleset(fs, _NET_TCP if abi >= 4 else 0, _SCOPE if abi >= 6 else 0)
    # The kernel accepts a larger struct as long as the fields it does not know are zero.
    rfd = libc.syscall(_CREATE, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if rfd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    dfd = os.open(write_dir, os.O_PATH | os.O_CLOEXEC)
    rule = PathBeneath(fs, dfd)
    if libc.syscall(_ADD_RULE, ctypes.c_int(rfd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_add_rule failed")
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to restrict self
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.syscall(_RESTRICT, ctypes.c_int(rfd), ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(dfd)
    os.close(rfd)
    return abi


def set_limits(cfg: dict) -> None:
    import _signal  # not `signal`: that one imports enum, ~4 ms a run
    import resource

    def cap(name, value):
        resource.setrlimit(getattr(resource, name), (value, value))  # soft == hard: no raising back

    cap("RLIMIT_CORE", 0)
    cap("RLIMIT_AS", cfg["memory_bytes"])
    cap("RLIMIT_FSIZE", cfg["file_bytes"])
    cap("RLIMIT_NPROC", 0)  # counts threads too; bypassed only by root, whom the parent drops
    cpu = cfg["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    # Past RLIMIT_FSIZE a write fails with EFBIG instead of killing the program.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)


def _deny(name):
    def denied(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")

    return denied


_OS_DENIED = (
    "kill killpg fork forkpty system popen putenv unsetenv setsid setuid setgid "
    "remove unlink removedirs rmdir rename renames replace truncate chmod fchmod lchmod "
    "chown fchown lchown chroot link symlink "
    "execl execle execlp execlpe execv execve execvp execvpe "
    "spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn posix_spawnp"
).split()
# Patched when (if) the program imports them: importing them here would cost ~15 ms a run.
_ON_IMPORT = {
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen", "call", "run", "check_call", "check_output", "getoutput", "getstatusoutput"),
    "socket": ("socket", "socketpair", "create_connection", "create_server", "fromfd"),
}


def _deny_all(module, names) -> None:
    for name in names:
        if hasattr(module, name):
            setattr(module, name, _deny(f"{module.__name__}.{name}"))


class _PatchOnImport:
    """A meta-path finder that lets another finder load a module, then disables its names."""

    def find_spec(self, name, path=None, target=None):
        if name not in _ON_IMPORT:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                load = spec.loader.exec_module

                def exec_module(module, load=load):
                    load(module)
                    _deny_all(module, _ON_IMPORT[name])

                spec.loader.exec_module = exec_module  # this spec's own loader instance
                return spec
        return None


def guard() -> None:
    """Python-level second layer (bypassable with ctypes; the kernel layers are the real ones)."""
    import builtins
    import os

    _deny_all(os, _OS_DENIED)
    import _posixsubprocess  # what subprocess and multiprocessing fork through

    _posixsubprocess.fork_exec = _deny("_posixsubprocess.fork_exec")
    for name, names in _ON_IMPORT.items():
        if name in sys.modules:
            _deny_all(sys.modules[name], names)
    sys.meta_path.insert(0, _PatchOnImport())
    builtins.help = None  # pydoc pager would spawn a process


def main(argv) -> None:
    # argv: program write_dir cpu_s memory_bytes file_bytes landlock guard (no json: its import costs ~10 ms)
    program, write_dir = argv[1], argv[2]
    cfg = {"cpu_s": int(argv[3]), "memory_bytes": int(argv[4]), "file_bytes": int(argv[5])}
    try:
        with open(program, encoding="utf-8") as f:
            source = f.read()
        set_limits(cfg)
        if argv[6] == "1":
            landlock(write_dir)
        if argv[7] == "1":
            guard()
    except Exception as exc:  # noqa: BLE001 - any setup failure must be reported, not run past
        sys.stderr.write(f"sandbox setup failed: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(SETUP_FAILED) from None
    sys.argv = [program]
    code = compile(source, program, "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main(sys.argv)
