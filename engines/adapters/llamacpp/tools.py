"""llama.cpp's own tools (llama-bench, llama-batched-bench, llama-server), built from the llama.cpp source vendored in the
installed llama-cpp-python's sdist, and llama.cpp's default thread count.

Used to check codebench's llama.cpp figures against llama.cpp's: `build_tools()` returns the binaries'
paths. The build uses the options llama-cpp-python's own CMakeLists.txt sets (shared libraries, the
common library, no curl; Release, scikit-build-core's default; Metal on macOS) plus $CMAKE_ARGS, which
llama-cpp-python's build reads too. Afterwards the built libllama's `llama_print_system_info()` must
equal the installed package's, else the build is refused (set CMAKE_ARGS as when you installed it).
Cached under <cache>/llama-tools/<version>[-<hash of CMAKE_ARGS>]/, so a second call returns at once.
No torch and no llama_cpp import here: the CLI process may call it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Iterator

TOOLS = ("llama-bench", "llama-batched-bench")
MANIFEST = "tools.json"
# The options llama-cpp-python's CMakeLists.txt forces, then only the targets we want.
BASE_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_CURL=OFF",
             "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
             # llama-server without its web UI: the assets come from npm or a download, neither of which we want
             "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF")  # fmt: skip
_SKIP = ("models/", "docs/")  # vendored vocab files and docs: 113 MB the tools do not need


class ToolsError(RuntimeError):
    """The tools cannot be built here; the message is one line that says why and what to do."""


# --- llama.cpp's default thread count ----------------------------------------------------------


def default_threads() -> int:
    """common_cpu_get_num_math() of llama.cpp's common/common.cpp: llama-bench's default -t.

    Linux: distinct thread_siblings masks of cpu0, cpu1, ... (stopping at the first CPU without one), i.e.
    physical cores on every CPU of the machine (the affinity mask is not consulted); on hybrid x86 CPUs
    the count of performance cores instead. macOS: hw.perflevel0.physicalcpu (performance cores).
    Windows: physical cores (psutil's count, as GetLogicalProcessorInformationEx's). Where none of that
    answers, llama.cpp's last resort: n <= 4 ? n : n / 2 of the logical CPUs.
    """
    n = 0
    if sys.platform.startswith("linux"):
        if platform.machine() == "x86_64" and _is_hybrid():
            n = _math_cpus_hybrid(os.sysconf("SC_NPROCESSORS_ONLN"))
        if n <= 0:
            n = _linux_physical_cores()
    elif sys.platform == "darwin":
        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                n = n or int(subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=True).stdout)
    else:
        import psutil

        n = psutil.cpu_count(logical=False) or 0
    if n > 0:
        return n
    logical = os.cpu_count() or 0
    return (logical if logical <= 4 else logical // 2) if logical else 4


def _linux_physical_cores(sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    siblings: set[str] = set()
    cpu = 0
    while True:
        try:
            line = (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings").read_text().split("\n")[0]
        except OSError:
            break
        siblings.add(line)
        cpu += 1
    return len(siblings)


def _is_hybrid() -> bool:
    """CPUID.7.EDX[15], which Linux lists as the `hybrid_cpu` flag."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " hybrid_cpu" in line for line in f)
    except OSError:
        return False


def _math_cpus_hybrid(n_cpu: int, atoms: set[int] | None = None, can_pin=None) -> int:
    """llama.cpp's cpu_count_math_cpus: pin to each CPU in turn; skip efficiency cores; count a performance
    core once and skip the next CPU (its hyperthread). -1 if pinning fails."""
    if atoms is None:
        try:
            atoms = _cpu_list(Path("/sys/devices/cpu_atom/cpus").read_text())
        except OSError:
            atoms = set()
    can_pin = can_pin or _can_pin
    result, cpu = 0, 0
    while cpu < n_cpu:
        if not can_pin(cpu):
            return -1
        if cpu not in atoms:
            cpu += 1  # "hyperthreading isn't useful for linear algebra"
            result += 1
        cpu += 1
    return result


def _cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _can_pin(cpu: int) -> bool:
    ok: list[bool] = []

    def probe() -> None:  # a throwaway thread, so the caller's own affinity never changes
        try:
            os.sched_setaffinity(0, {cpu})
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return ok[0]


# --- building the tools ----------------------------------------------------------------------------


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise ToolsError('llama-cpp-python is not installed; pip install "codebench-tui[llamacpp]"') from None


def cmake_args() -> list[str]:
    args = list(BASE_ARGS)
    if sys.platform == "darwin":  # what llama-cpp-python's CMakeLists.txt sets on Apple
        args += ["-DGGML_METAL=ON", "-DGGML_METAL_EMBED_LIBRARY=ON"]
        if platform.machine() == "x86_64":
            args += [f"-DGGML_{f}=OFF" for f in ("AVX", "AVX2", "FMA", "F16C")]
    return args + shlex.split(os.environ.get("CMAKE_ARGS", ""))


def tools_dir(version: str | None = None) -> Path:
    """<cache>/llama-tools/<key>; $CODEBENCH_TOOLS_CACHE replaces <cache> (the tests share the user's build)."""
    from engines.models.tiny import cache_dir

    version = version or installed_version()
    extra = os.environ.get("CMAKE_ARGS", "").strip()
    key = version + (f"-{hashlib.sha256(extra.encode()).hexdigest()[:8]}" if extra else "")
    root = Path(os.environ["CODEBENCH_TOOLS_CACHE"]) if os.environ.get("CODEBENCH_TOOLS_CACHE") else cache_dir()
    return root / "llama-tools" / key


def manifest(version: str | None = None) -> dict:
    """What the last build recorded (tools, system_info, cmake args, version), or {}."""
    try:
        return json.loads((tools_dir(version) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def build_tools(targets: tuple[str, ...] = TOOLS, version: str | None = None, jobs: int | None = None,
                log=None) -> dict[str, Path]:  # fmt: skip
    """{tool name: binary path}, building what is missing (minutes the first time, then cached)."""
    root = tools_dir(version)
    found = _cached(root, targets)
    if found:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / ".lock"):
        found = _cached(root, targets)  # another process may have built them meanwhile
        if found:
            return found
        _check_toolchain()
        version = version or installed_version()
        src = _source(root, version, log)
        build = root / "build"
        t0 = time.perf_counter()
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(["cmake", "-S", str(src), "-B", str(build), *gen, *cmake_args()], root / "configure.log", log)
        wanted = sorted(set(targets) | set(manifest(version).get("tools", {})))
        _run(["cmake", "--build", str(build), "--target", *wanted, "-j", str(jobs or os.cpu_count() or 1)],
             root / "build.log", log)  # fmt: skip
        info, theirs = built_system_info(build / "bin"), installed_system_info()
        if info != theirs:
            raise ToolsError(f"the built llama.cpp reports '{info}' but llama-cpp-python {version} reports '{theirs}'; "
                             "set CMAKE_ARGS as when you installed llama-cpp-python and call again")  # fmt: skip
        doc = {"version": version, "cmake_args": cmake_args(), "system_info": info,
               "build_s": round(time.perf_counter() - t0, 1),
               "tools": {t: str(build / "bin" / t) for t in wanted}}  # fmt: skip
        tmp = root / f".{MANIFEST}.{os.getpid()}"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, root / MANIFEST)
        return {t: Path(doc["tools"][t]) for t in targets}


def tool(name: str) -> Path:
    """One tool's path, e.g. tool("llama-bench")."""
    return build_tools((name,))[name]


def _cached(root: Path, targets: tuple[str, ...]) -> dict[str, Path] | None:
    try:
        tools = json.loads((root / MANIFEST).read_text())["tools"]
        paths = {t: Path(tools[t]) for t in targets}
    except (OSError, ValueError, KeyError):
        return None
    return paths if all(os.access(p, os.X_OK) for p in paths.values()) else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        with contextlib.suppress(ImportError):
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even if we crash
        yield


def _check_toolchain() -> None:
    missing = [] if shutil.which("cmake") else ["cmake"]
    cxx = os.environ.get("CXX", "")
    if not (shutil.which(cxx) if cxx else any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        missing.append(cxx or "a C++ compiler (c++, g++ or clang++)")
    if missing:
        raise ToolsError(f"building llama.cpp's tools needs cmake and a C/C++ compiler; missing: {', '.join(missing)} "
                         "(e.g. apt-get install cmake g++, or pip install cmake)")  # fmt: skip


def _source(root: Path, version: str, log) -> Path:
    """vendor/llama.cpp of the sdist, unpacked once under root/src."""
    src = root / "src" / "llama.cpp"
    if (src / "CMakeLists.txt").is_file():
        return src
    tarball = _sdist(root.parent / "sdist", version, log)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = root / f".src.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix) and not m.name[len(prefix):].startswith(_SKIP):
                m.name = "llama.cpp/" + m.name[len(prefix):]
                members.append(m)
        if not members:
            raise ToolsError(f"{tarball} holds no vendor/llama.cpp; it is not llama-cpp-python {version}'s sdist")
        tar.extractall(tmp, members=members, filter="data")
    (root / "src").mkdir(exist_ok=True)
    shutil.rmtree(src, ignore_errors=True)
    os.replace(tmp / "llama.cpp", src)
    shutil.rmtree(tmp, ignore_errors=True)
    return src


def _sdist(where: Path, version: str, log) -> Path:
    """llama-cpp-python's sdist: in our cache, in a pip --find-links directory, or fetched by pip."""
    name = f"llama_cpp_python-{version}.tar.gz"
    for d in [where, *os.environ.get("PIP_FIND_LINKS", "").split()]:
        if (Path(d) / name).is_file():
            return Path(d) / name
    where.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(where)]  # fmt: skip
    _run(cmd, where / "pip-download.log", log)
    if not (where / name).is_file():
        raise ToolsError(f"pip download did not produce {name}; see {where / 'pip-download.log'}")
    return where / name


def _run(cmd: list[str], logfile: Path, log) -> None:
    if log:
        log(" ".join(shlex.quote(c) for c in cmd))
    with open(logfile, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise ToolsError(f"{Path(cmd[0]).name} {cmd[1]} failed (exit {rc}): {tail[0][:300]}; full log: {logfile}")


# --- what each build reports ----------------------------------------------------------------------------

_INFO = "import ctypes,sys; lib=ctypes.CDLL(sys.argv[1]); lib.llama_print_system_info.restype=ctypes.c_char_p; " \
        "print(lib.llama_print_system_info().decode().strip())"  # fmt: skip


def built_system_info(bin_dir: Path) -> str:
    """llama_print_system_info() of the libllama the tools load (in a subprocess: never two libllamas in one)."""
    lib = next((p for p in (bin_dir / n for n in ("libllama.so", "libllama.dylib", "llama.dll")) if p.exists()), None)
    if lib is None:
        raise ToolsError(f"no libllama in {bin_dir}: was llama.cpp built with -DBUILD_SHARED_LIBS=ON?")
    return _py([_INFO, str(lib)])


def installed_system_info() -> str:
    return _py(["import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())"])


def _py(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolsError(f"could not read llama.cpp's system info: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    return proc.stdout.strip()
