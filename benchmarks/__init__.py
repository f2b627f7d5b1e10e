"""The benchmarks, a package so the worker can import ``benchmarks.bench_jobs``."""
