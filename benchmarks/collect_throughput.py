"""`dynamicid collect` on Spark against a plain thread pool (issue 26 §1): the same URL list from the same
loopback server, downloaded by each in turn, in one run, with the same concurrency in all (Spark: cores x
--threads; the pool: that many threads) and the same download code (`collect.fetch.fetch`). Each URL waits
DELAY ms on the server, standing in for the network; the bytes differ per URL. Spark's session is started
before the clock; its job (reading the list, marking duplicates, downloading, the manifest) is timed whole.

    .venv/bin/python benchmarks/collect_throughput.py [URLS] [DELAY_MS]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from benchmarks_common import results_path, write_json  # noqa: E402  (same folder)
from photo_server import PhotoServer  # noqa: E402

from dynamicid.collect import CollectConfig, run_collect  # noqa: E402
from dynamicid.collect.fetch import HostLimits, fetch  # noqa: E402
from dynamicid.collect.job import photo_name  # noqa: E402


def pool_run(urls: list[str], config: CollectConfig, folder: str) -> float:
    hosts = HostLimits(config.per_host)
    started = time.perf_counter()
    with ThreadPoolExecutor(config.threads) as pool:
        results = list(pool.map(lambda url: fetch(url, os.path.join(folder, photo_name(url)), config, hosts), urls))
    seconds = time.perf_counter() - started
    assert all(r.status == "ok" for r in results), {r.status for r in results}
    return seconds


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    delay = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    from dynamicid.prep.sparkenv import build_session

    spark = build_session(None, app_name="collect-benchmark")
    cores = spark.sparkContext.defaultParallelism
    threads_per_task = 32
    work = tempfile.mkdtemp(prefix="collect-bench-")
    with PhotoServer() as server:
        urls = [f"{server.url}/delay/{delay}/u{n}.jpg" for n in range(count)]
        listing = os.path.join(work, "urls.txt")
        with open(listing, "w") as handle:
            handle.write("\n".join(urls) + "\n")
        common = dict(
            threads=threads_per_task,
            per_host=threads_per_task,
            progress=False,
            retries=0,
            allow_addresses="127.0.0.1/32",
        )
        spark_config = CollectConfig(urls=listing, output=os.path.join(work, "spark"), **common)
        started = time.perf_counter()
        result = run_collect(spark_config, spark=spark)
        spark_s = time.perf_counter() - started
        assert result.summary["photos"] == count, result.summary
        pool_config = CollectConfig(
            urls=listing,
            output=os.path.join(work, "pool"),
            **(common | {"threads": cores * threads_per_task, "per_host": cores * threads_per_task}),
        )
        pool_s = pool_run(urls, pool_config, os.path.join(work, "pool"))
    row = {
        "machine": f"{os.cpu_count()}-core build machine, local[*] ({cores} task slots)",
        "urls": count,
        "server_delay_ms": delay,
        "concurrency": cores * threads_per_task,
        "spark_s": round(spark_s, 2),
        "pool_s": round(pool_s, 2),
        "spark_photos_per_s": round(count / spark_s, 1),
        "pool_photos_per_s": round(count / pool_s, 1),
        "spark_vs_pool": round(pool_s / spark_s, 3),
    }
    print(json.dumps(row, indent=1))
    write_json(results_path("results-collect-cpu.json"), "cpu", [row])


if __name__ == "__main__":
    main()
